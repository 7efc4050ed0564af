prelude
import LwFix.Nat

/-! # LwFix.List

Lists with `length` and `append` by recursor, and lemmas proved by induction. -/

universe w

inductive List (α : Type w) where
  | nil : List α
  | cons : α → List α → List α

namespace List

variable {α : Type w}

noncomputable def length (xs : List α) : N :=
  List.rec (motive := fun _ => N) N.zero (fun _ _ acc => N.succ acc) xs

noncomputable def append (xs ys : List α) : List α :=
  List.rec (motive := fun _ => List α) ys (fun x _ acc => cons x acc) xs

theorem nil_append (ys : List α) : Eq (append nil ys) ys := Eq.refl

theorem cons_append (x : α) (xs ys : List α) : Eq (append (cons x xs) ys) (cons x (append xs ys)) :=
  Eq.refl

theorem length_cons (x : α) (xs : List α) : Eq (length (cons x xs)) (N.succ (length xs)) := Eq.refl

theorem length_append (xs ys : List α) :
    Eq (length (append xs ys)) (N.add (length ys) (length xs)) :=
  List.rec (motive := fun l => Eq (length (append l ys)) (N.add (length ys) (length l)))
    Eq.refl (fun _ _ ih => congrArg N.succ ih) xs

end List
