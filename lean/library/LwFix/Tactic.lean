prelude
import LwFix.Meta

/-!
# LwFix.Tactic

Tactic syntax for `by` blocks in `prelude` files. The tactic *elaborators* (`evalExact`,
`evalIntro`, `evalInduction`, ...) are compiled into `lean`, each registered for a syntax node
kind such as `Lean.Parser.Tactic.exact`; what a bare prelude lacks is the *syntax*, which
`Init/Tactics.lean` declares. This module declares it again, under the same names, so that the
parser produces nodes of the kinds the elaborators wait for. `syntax (name := exact) ...`
inside `namespace Lean.Parser.Tactic` declares the parser constant *and* the node kind
`Lean.Parser.Tactic.exact`.

How `lean` runs these declarations: each `syntax` becomes a `Lean.ParserDescr` constant that
`lean` evaluates in its IR interpreter (see `LwFix.Meta` for the layouts this needs). The
interpreter prefers native code by name, and the `lean` binary contains `Init`, so for a
constant the binary also has (`l_Lean_Parser_Tactic_exact`, ...) it loads the *native* value:
the grammar in effect is then the real one of Lean 4.35, whatever is written here (a
`syntax (name := exact) "exakt " term : tactic` still parses `exact`). The declarations below
follow the real grammar anyway, written with the builtin parser aliases (`many`, `many1`,
`optional`, `orelse`, ...) because the `stx` notations `p*`, `p+`, `p?`, `p <|> q` and the
precedence names (`max`) are themselves declared in `Init` (and expanded by macros). Helper
syntaxes that the real grammar refers to by name (`Lean.binderIdent`, `Lean.cdotTk`,
`caseArg`, `elimTarget`, `inductionAlt(s)`, `inductionAltLHS`) must exist as declarations too.

`rfl` is not real syntax here: in `Init` it is a macro (`tacticRfl`) and macros need the whole
`Lean.Macro`/`Syntax`/quotation machinery. `LwFix.rflTactic` is a hand-written `ParserDescr`
that parses the token `rfl` into a node of kind `Lean.Parser.Tactic.applyRfl`, whose builtin
elaborator (`Lean.Elab.Tactic.Rfl.evalApplyRfl`, i.e. `MVarId.applyRfl`) closes `Eq` and `HEq`
goals by `Eq.refl`/`HEq.refl` up to definitional equality. Its name is not one the binary has,
so the grammar written here is the one used.

Not available, because each is a macro in `Init`: `exfalso`, `trivial`, `sorry`/`admit` (write
`exact sorry`), `have`, `next`, `try`, `<;>`, `repeat`, `exists`.
-/

universe u

/-- What `contradiction` closes a goal with when a hypothesis is `False`. -/
@[macro_inline] def False.elim {C : Sort u} (h : False) : C :=
  False.rec (motive := fun _ => C) h

/-! ### Constructor index and `noConfusion`

Since `LwFix.Meta` declares `Nat`, Lean gives every inductive type declared after it a
`T.ctorIdx : T → Nat`, and `noConfusion` (what `cases` uses on an equation between
constructors: `Eq (T.s a) T.z` closes the goal, `Eq (T.s a) (T.s b)` gives `Eq a b`) is proved
with `noConfusion_of_Nat T.ctorIdx`. These are what that construction names: `cond`, `PULift`,
`Nat.beq`, `Nat.ble` (the kernel computes both on literals; the compiled code is the native
`lean_nat_dec_eq`/`lean_nat_dec_le`) and `noConfusion_of_Nat`. Types declared before this
module (`N` and `List` of `LwFix.Nat`/`LwFix.List`) have neither, so `cases` on an equation
between their constructors fails with `mkNoConfusion: Missing N.ctorIdx or noConfusion_of_Nat`.
-/

@[macro_inline] def cond {α : Sort u} (c : Bool) (x y : α) : α :=
  Bool.casesOn (motive := fun _ => α) c y x

structure PULift.{r, s} (α : Sort s) : Sort (max s r 1) where
  up :: down : α

@[extern "lean_nat_dec_eq"]
def Nat.beq (n m : Nat) : Bool :=
  Nat.rec (motive := fun _ => Nat → Bool)
    (fun m => Nat.casesOn (motive := fun _ => Bool) m Bool.true (fun _ => Bool.false))
    (fun _ ih m => Nat.casesOn (motive := fun _ => Bool) m Bool.false (fun m' => ih m')) n m

@[extern "lean_nat_dec_le"]
def Nat.ble (n m : Nat) : Bool :=
  Nat.rec (motive := fun _ => Nat → Bool)
    (fun _ => Bool.true)
    (fun _ ih m => Nat.casesOn (motive := fun _ => Bool) m Bool.false (fun m' => ih m')) n m

theorem Nat.beq_refl (n : Nat) : Eq (Nat.beq n n) Bool.true :=
  Nat.rec (motive := fun k => Eq (Nat.beq k k) Bool.true) Eq.refl (fun _ ih => ih) n

theorem noConfusion_of_Nat {α : Sort u} (f : α → Nat) {a b : α} (h : Eq a b) :
    Bool.rec False True (Nat.beq (f a) (f b)) :=
  Eq.rec (motive := fun x _ => Bool.rec (motive := fun _ => Prop) False True (Nat.beq (f a) (f x)))
    (@Eq.rec Bool Bool.true (fun c _ => Bool.rec (motive := fun _ => Prop) False True c) True.intro
      (Nat.beq (f a) (f a)) (Eq.symm (Nat.beq_refl (f a)))) h

/-! ### Tactic syntax -/

namespace Lean

syntax binderIdent := orelse(ident, hole)
syntax cdotTk := patternIgnore(orelse("· ", ". "))
/-- `· tac` focuses on the main goal and must close it. -/
syntax (name := cdot) cdotTk tacticSeqIndentGt : tactic

end Lean

namespace Lean.Parser.Tactic

syntax (name := exact) "exact " term : tactic
syntax (name := refine) "refine " term : tactic
syntax (name := refine') "refine' " term : tactic
syntax (name := apply) "apply " term : tactic
syntax (name := intro) "intro" notFollowedBy("|") many(ppSpace colGt term:1024) : tactic
syntax (name := intros) "intros" many(ppSpace colGt orelse(ident, hole)) : tactic
syntax (name := revert) "revert" many1(ppSpace colGt term:1024) : tactic
syntax (name := clear) "clear" many1(ppSpace colGt term:1024) : tactic
syntax (name := subst) "subst" many1(ppSpace colGt term:1024) : tactic
syntax (name := assumption) "assumption" : tactic
syntax (name := contradiction) "contradiction" : tactic
syntax (name := constructor) "constructor" : tactic
syntax (name := left) "left" : tactic
syntax (name := right) "right" : tactic
syntax (name := «show») "show " term : tactic
syntax (name := eqRefl) "eq_refl" : tactic
syntax (name := applyRfl) "apply_rfl" : tactic
syntax (name := skip) "skip" : tactic
syntax (name := done) "done" : tactic
syntax (name := fail) "fail" optional(ppSpace str) : tactic
syntax (name := allGoals) "all_goals " tacticSeq : tactic
syntax (name := anyGoals) "any_goals " tacticSeq : tactic
syntax (name := focus) "focus " tacticSeq : tactic
syntax (name := paren) "(" withoutPosition(tacticSeq) ")" : tactic
syntax (name := first) "first " withPosition(many1(ppDedent(ppLine) colGe "| " tacticSeq)) : tactic

syntax caseArg := binderIdent many(ppSpace binderIdent)
syntax (name := case) "case " sepBy1(caseArg, " | ") " => " tacticSeq : tactic
syntax (name := case') "case' " sepBy1(caseArg, " | ") " => " tacticSeq : tactic
syntax (name := renameI) "rename_i" many1(ppSpace colGt binderIdent) : tactic

syntax elimTarget := optional(atomic(binderIdent " : ")) term
syntax inductionAltLHS := "| " orelse(group(optional("@") ident), hole) many(colGt orelse(ident, hole))
syntax inductionAlt :=
  ppDedent(ppLine) many1(inductionAltLHS) " => " orelse(hole, orelse(syntheticHole, tacticSeq))
syntax inductionAlts := " with" optional(ppSpace colGt tactic) withPosition(many1(colGe inductionAlt))
syntax (name := induction) "induction " sepBy1(elimTarget, ", ") optional(" using " ident)
  optional("generalizing" many1(ppSpace colGt term:1024)) optional(inductionAlts) : tactic
syntax (name := cases) "cases " sepBy1(elimTarget, ", ") optional(" using " ident)
  optional(inductionAlts) : tactic

end Lean.Parser.Tactic

/-- `rfl`: a node of kind `Lean.Parser.Tactic.applyRfl` (see the module comment). -/
@[tactic_parser] def LwFix.rflTactic : Lean.ParserDescr :=
  Lean.ParserDescr.node `Lean.Parser.Tactic.applyRfl 1023
    (Lean.ParserDescr.nonReservedSymbol "rfl" Bool.false)
