prelude
import LwFix.Nat
import LwFix.Tactic

/-! Every tactic `LwFix.Tactic` provides, in proofs that check: no output at all, exit 0. -/

theorem exact_ok (p : Prop) (h : p) : p := by
  exact h

theorem intro_constructor_cdot (p q : Prop) (hq : q) : p → And p q := by
  intro hp
  constructor
  · exact hp
  · exact hq

theorem apply_paren_done (p q : Prop) (hp : p) (hq : q) : And p q := by
  apply And.intro
  (exact hp)
  exact hq
  done

theorem right_assumption (p q : Prop) (hq : q) : Or p q := by
  right
  assumption

theorem left_intros (p q : Prop) : p → q → Or p q := by
  intros
  left
  assumption

theorem cases_with (p q : Prop) (h : Or p q) : Or q p := by
  cases h with
  | inl hp => exact Or.inr hp
  | inr hq => exact Or.inl hq

theorem cases_case (p q : Prop) (h : Or p q) : Or q p := by
  cases h
  case inl hp => exact Or.inr hp
  case inr hq => exact Or.inl hq

theorem induction_zero_add (n : N) : Eq (N.add N.zero n) n := by
  induction n with
  | zero => rfl
  | succ k ih => exact congrArg N.succ ih

theorem induction_rename (n : N) : Eq (N.add N.zero n) n := by
  induction n
  · eq_refl
  · rename_i k ih
    exact congrArg N.succ ih

theorem rfl_computes : Eq (N.mul N.two N.two) N.four := by
  rfl

theorem apply_rfl_ok (n : N) : Eq (N.add n N.zero) n := by
  apply_rfl

theorem refine_show (p q : Prop) (hp : p) (hq : q) : And p q := by
  refine And.intro ?_ hq
  show p
  exact hp

theorem refine'_any_goals (p q : Prop) (hp : p) (hq : q) : And p q := by
  refine' And.intro _ _
  any_goals assumption

theorem first_all_goals (p q : Prop) (hp : p) (hq : q) : And p q := by
  constructor
  all_goals first | exact hq | assumption

theorem focus_skip (p : Prop) (hp : p) : p := by
  skip
  focus
    exact hp

theorem contradiction_false (p : Prop) (h : False) : p := by
  contradiction

theorem contradiction_not (p q : Prop) (hp : p) (hn : Not p) : q := by
  contradiction

theorem subst_eq (a b : N) (h : Eq a b) : Eq b a := by
  subst h
  rfl

theorem cases_eq (a b : N) (h : Eq a b) : Eq b a := by
  cases h
  rfl

theorem revert_clear (p q : Prop) (hp : p) (_hq : q) : p := by
  clear _hq
  revert hp
  intro h
  exact h

inductive T where
  | z : T
  | s : T → T

theorem cases_ctor_clash (a : T) (h : Eq (T.s a) T.z) : False := by
  cases h

theorem cases_ctor_injective (a b : T) (h : Eq (T.s a) (T.s b)) : Eq a b := by
  cases h
  rfl

theorem contradiction_ctor_clash (p : Prop) (a : T) (h : Eq T.z (T.s a)) : p := by
  contradiction
