prelude
import LwFix.Logic

/-!
# LwFix.Meta

What the `syntax` command and the builtin tactic framework of Lean 4.35 need from a prelude,
for `LwFix.Tactic`. It replaces `LwFix.Sorry` (it declares `Bool`, `Nat`, `String`, `Unit`,
`Lean.Name` and `sorryAx` too, differently), so a file imports one of the two, never both.

The declarations fall in three groups.

**Runtime layouts.** `syntax` turns a declaration into a `Lean.ParserDescr` value that the
running `lean` evaluates in its IR interpreter and then reads with its own native code, so
these types must have the real constructor order and field shapes:

* `Lean.Name`: `anonymous | str pre s | num pre i`, plus a `@[computed_field] hash : UInt64`.
  A computed field is stored in every constructor object, so `str` and `num` are objects with
  two pointer fields and 8 scalar bytes. Native code reads that scalar: `Name.beq`
  (`lean_name_eq`) compares hashes before components, and the parser tables are hash maps keyed
  by names. Without the field a `Name` object would be 8 bytes short and every kind lookup would
  read past it. The hash follows the real rule (`1723` for `anonymous`, `mixHash` of the prefix
  hash and the component hash) with one simplification: a numeric component of 2^64 or more is
  hashed by its low 64 bits where the real code uses 17; in practice the names are built by
  native code anyway (below).
* `UInt64`: the compiler maps the name `UInt64` to an unboxed `u64`, whatever the structure
  says; its one field here only gives it a model.
* `Lean.ParserDescr`: the 13 constructors in the real order (`const`, `unary`, `binary`, `node`,
  `trailingNode` with `prec lhsPrec`, `symbol`, `nonReservedSymbol`, `cat`, `parser`,
  `nodeWithAntiquot`, `sepBy`, `sepBy1`, `unicodeSymbol`): `lean` dispatches on the constructor
  tag. `Lean.TrailingParserDescr` is the abbreviation `syntax` uses for trailing parsers.

**Native implementations.** The IR interpreter prefers native code: for every function it is
about to run it looks up the mangled name (`l_Lean_Name_mkStr4`, ...) in the running binary,
which contains all of `Init` and `Lean`, and calls that if found
(`interpreter.prefer_native`, on by default, also for declarations of the module being
compiled). So the quoted names in a `ParserDescr` (`Lean.Name.mkStr4 "Lean" "Parser" "Tactic"
"exact"`) are built by the real `Lean.Name.mkStr4` and carry real hashes, and `mixHash`,
`String.hash`, `UInt64.ofNat` and `Nat.add` (declared `@[extern]`) resolve to
`l_mixHash___boxed` and friends. Each of them still needs a declaration here: the interpreter
only looks for native code for functions it has IR for.

**Logic the generated code needs.** The computed field is defined by structural recursion, so
`Lean.Name` needs `Name.below`/`brecOn` (Lean builds them when `PProd`, `Prod` and `PUnit`
exist) and the equation compiler (`Unit`, `Eq.ndrec`, `HEq`, `eq_of_heq`, `heq_of_eq`, `id`
for `noConfusion`); computed fields are implemented with `unsafeCast` (`cast`, `PLift`,
`ULift`, `lcProof`); `Nat.add` and `OfNat`/`instOfNatNat` are what numeric literals and the
generated code refer to; `sorryAx` and `Function.const` are what error recovery elaborates to
(see `LwFix.Sorry`). `HEq`, `Eq.ndrec` and `eq_of_heq` are also what `cases` uses to
substitute equations, and every inductive type declared after this module gets a
`noConfusion`.
-/

set_option genCtorIdx false

universe u v

@[inline] def id {α : Sort u} (a : α) : α := a

/-- Non-dependent elimination of `Eq`; `cases` and the equation compiler name it. -/
@[reducible] def Eq.ndrec.{u1, u2} {α : Sort u2} {a : α} {motive : α → Sort u1} (m : motive a) {b : α}
    (h : Eq a b) : motive b :=
  Eq.rec (motive := fun x _ => motive x) m h

@[macro_inline] def cast {α β : Sort u} (h : Eq α β) (a : α) : β :=
  Eq.rec (motive := fun x _ => x) a h

inductive HEq : {α : Sort u} → α → {β : Sort u} → β → Prop where
  | refl (a : α) : HEq a a

theorem eq_of_heq {α : Sort u} {a a' : α} (h : HEq a a') : Eq a a' :=
  @HEq.rec α a (fun {β} b _ => (e : Eq α β) → Eq (cast e a) b) (fun _ => @Eq.refl α a) α a' h
    (@Eq.refl (Sort u) α)

theorem heq_of_eq {α : Sort u} {a a' : α} (h : Eq a a') : HEq a a' :=
  Eq.rec (motive := fun x _ => HEq a x) (HEq.refl a) h

structure PProd (α : Sort u) (β : Sort v) where
  fst : α
  snd : β

structure Prod (α : Type u) (β : Type v) where
  fst : α
  snd : β

structure PLift (α : Sort u) : Type u where
  up :: down : α

structure ULift.{r, s} (α : Type s) : Type (max s r) where
  up :: down : α

unsafe axiom lcProof {α : Prop} : α

/-- Computed fields are implemented with it; the code generator compiles it to nothing. -/
@[inline] unsafe def unsafeCast {α : Sort u} {β : Sort v} (a : α) : β :=
  PLift.down (ULift.down.{max u v} (cast lcProof (ULift.up.{max u v} (PLift.up a))))

abbrev Unit : Type := PUnit

@[match_pattern] abbrev Unit.unit : Unit := PUnit.unit

inductive Bool where
  | false : Bool
  | true : Bool

inductive Nat where
  | zero : Nat
  | succ (n : Nat) : Nat

@[extern "lean_nat_add"]
protected def Nat.add (n m : Nat) : Nat :=
  Nat.rec (motive := fun _ => Nat) n (fun _ acc => Nat.succ acc) m

class OfNat (α : Type u) (_ : Nat) where
  ofNat : α

instance instOfNatNat (n : Nat) : OfNat Nat n where
  ofNat := n

/-- The type of string literals; opaque, nothing here computes with strings. -/
axiom String : Type

structure UInt64 where
  val : Nat

@[extern "lean_uint64_mix_hash"]
opaque mixHash (a b : UInt64) : UInt64 := a

@[extern "lean_string_hash"]
opaque String.hash (s : String) : UInt64 := UInt64.mk Nat.zero

@[extern "lean_uint64_of_nat"]
opaque UInt64.ofNat (n : Nat) : UInt64 := UInt64.mk n

namespace Lean

inductive Name where
  | anonymous : Name
  | str (pre : Name) (s : String) : Name
  | num (pre : Name) (i : Nat) : Name
with
  @[computed_field] hash : Name → UInt64
    | .anonymous => UInt64.ofNat 1723
    | .str p s => mixHash p.hash (String.hash s)
    | .num p v => mixHash p.hash (UInt64.ofNat v)

namespace Name

-- What the elaborator emits for a quoted name: `` `a.b `` is `Name.mkStr2 "a" "b"`.
@[reducible] def mkStr (p : Name) (s : String) : Name := Name.str p s
@[reducible] def mkNum (p : Name) (v : Nat) : Name := Name.num p v
@[reducible] def mkSimple (s : String) : Name := Name.str Name.anonymous s
@[reducible] def mkStr1 (s₁ : String) : Name := mkSimple s₁
@[reducible] def mkStr2 (s₁ s₂ : String) : Name := mkStr (mkStr1 s₁) s₂
@[reducible] def mkStr3 (s₁ s₂ s₃ : String) : Name := mkStr (mkStr2 s₁ s₂) s₃
@[reducible] def mkStr4 (s₁ s₂ s₃ s₄ : String) : Name := mkStr (mkStr3 s₁ s₂ s₃) s₄
@[reducible] def mkStr5 (s₁ s₂ s₃ s₄ s₅ : String) : Name := mkStr (mkStr4 s₁ s₂ s₃ s₄) s₅
@[reducible] def mkStr6 (s₁ s₂ s₃ s₄ s₅ s₆ : String) : Name := mkStr (mkStr5 s₁ s₂ s₃ s₄ s₅) s₆
@[reducible] def mkStr7 (s₁ s₂ s₃ s₄ s₅ s₆ s₇ : String) : Name :=
  mkStr (mkStr6 s₁ s₂ s₃ s₄ s₅ s₆) s₇
@[reducible] def mkStr8 (s₁ s₂ s₃ s₄ s₅ s₆ s₇ s₈ : String) : Name :=
  mkStr (mkStr7 s₁ s₂ s₃ s₄ s₅ s₆ s₇) s₈

end Name

abbrev SyntaxNodeKind := Name

/-- A grammar the `syntax` command compiles to; `lean` reads it by constructor tag. -/
inductive ParserDescr where
  | const (name : Name)
  | unary (name : Name) (p : ParserDescr)
  | binary (name : Name) (p₁ p₂ : ParserDescr)
  | node (kind : SyntaxNodeKind) (prec : Nat) (p : ParserDescr)
  | trailingNode (kind : SyntaxNodeKind) (prec lhsPrec : Nat) (p : ParserDescr)
  | symbol (val : String)
  | nonReservedSymbol (val : String) (includeIdent : Bool)
  | cat (catName : Name) (rbp : Nat)
  | parser (declName : Name)
  | nodeWithAntiquot (name : String) (kind : SyntaxNodeKind) (p : ParserDescr)
  | sepBy (p : ParserDescr) (sep : String) (psep : ParserDescr) (allowTrailingSep : Bool)
  | sepBy1 (p : ParserDescr) (sep : String) (psep : ParserDescr) (allowTrailingSep : Bool)
  | unicodeSymbol (val asciiVal : String) (preserveForPP : Bool)

/-- `syntax` declares a trailing parser (one that starts with a category) with this type. -/
abbrev TrailingParserDescr := ParserDescr

end Lean

def Function.const {α : Sort u} (β : Sort v) (a : α) : β → α := fun _ => a

/-- What `sorry` elaborates to; `synthetic` is `true` for the ones Lean inserts after an error. -/
axiom sorryAx (α : Sort u) (synthetic : Bool) : α
