-- expect: error 10:65
prelude
import LwFix.Nat
import LwFix.Sorry

/-! Exactly one error: two plus two is not three, so `Eq.refl` does not have this type.
`LwFix.Sorry` is imported because Lean elaborates the failed proof to a synthetic `sorry`;
without it that `sorry` is a second error, "internal exception #3". -/

theorem two_add_two_eq_three : Eq (N.add N.two N.two) N.three := Eq.refl
