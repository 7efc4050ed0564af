prelude
import LwFix.List

/-! Checks clean: no messages at all. Defines a function and proves facts about it. -/

noncomputable def double (n : N) : N := N.add n n

theorem double_two : Eq (double N.two) N.four := Eq.refl

theorem double_succ (n : N) : Eq (double (N.succ n)) (N.succ (N.succ (double n))) :=
  congrArg N.succ (N.succ_add n n)

theorem length_pair : Eq (List.length (List.cons N.one (List.cons N.two List.nil))) N.two := Eq.refl

theorem append_length_two (xs : List N) :
    Eq (List.length (List.append (List.cons N.zero (List.cons N.zero List.nil)) xs))
      (N.succ (N.succ (List.length xs))) :=
  Eq.refl
