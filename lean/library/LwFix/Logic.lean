prelude

/-!
# LwFix.Logic

Equality, truth and the connectives, for `prelude` files: the test toolchain has no `Init`.
Every proof is a recursor application; there is no pattern matching (it needs `PProd`) and no
tactic framework (tactic syntax is declared in `Init`).
-/

universe u v

/-- The code generator names this when it erases proof fields (`And.intro`). -/
axiom lcErased : Type

/-- The code generator names this for the type parameters of inductive types (`List α`). -/
axiom lcAny : Type

/-- The code generator names this for parameters a compiled function ignores. -/
axiom lcVoid : Type

-- With `PUnit` in scope Lean generates `casesOn` for every later inductive type, which the
-- code generator compiles (it rejects `rec`). `Init.Prelude` declares it the same way.
set_option bootstrap.inductiveCheckResultingUniverse false in
inductive PUnit : Sort u where
  | unit : PUnit

inductive Eq {α : Sort u} (a : α) : α → Prop where
  | refl : Eq a a

inductive True : Prop where
  | intro : True

inductive False : Prop

inductive And (a b : Prop) : Prop where
  | intro : a → b → And a b

inductive Or (a b : Prop) : Prop where
  | inl : a → Or a b
  | inr : b → Or a b

def Not (a : Prop) : Prop := a → False

theorem Eq.symm {α : Sort u} {a b : α} (h : Eq a b) : Eq b a :=
  Eq.rec (motive := fun x _ => Eq x a) Eq.refl h

theorem Eq.trans {α : Sort u} {a b c : α} (h₁ : Eq a b) (h₂ : Eq b c) : Eq a c :=
  Eq.rec (motive := fun x _ => Eq a x) h₁ h₂

theorem congrArg {α : Sort u} {β : Sort v} {a b : α} (f : α → β) (h : Eq a b) : Eq (f a) (f b) :=
  Eq.rec (motive := fun x _ => Eq (f a) (f x)) Eq.refl h

theorem absurd {a b : Prop} (h₁ : a) (h₂ : Not a) : b :=
  False.rec (motive := fun _ => b) (h₂ h₁)

theorem And.left {a b : Prop} (h : And a b) : a :=
  And.rec (motive := fun _ => a) (fun ha _ => ha) h

theorem And.right {a b : Prop} (h : And a b) : b :=
  And.rec (motive := fun _ => b) (fun _ hb => hb) h

theorem And.symm {a b : Prop} (h : And a b) : And b a :=
  And.intro (And.right h) (And.left h)

theorem Or.symm {a b : Prop} (h : Or a b) : Or b a :=
  Or.rec (motive := fun _ => Or b a) (fun ha => Or.inr ha) (fun hb => Or.inl hb) h
