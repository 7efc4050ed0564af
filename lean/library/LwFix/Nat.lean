prelude
import LwFix.Logic

/-!
# LwFix.Nat

Unary natural numbers `N`. Not named `Nat` on purpose: Lean treats `Nat` specially (the kernel
computes `Nat.add` on literals with GMP, and once a `Nat` exists Lean builds a `ctorIdx` for
every later inductive type, which needs `cond`, `Nat.decEq` and more that a bare prelude lacks).
`N` reduces only by its recursor, one `succ` at a time, which is what `heartbeats.lean` relies
on. These functions use the recursor, so they are `noncomputable` (the code generator rejects
`rec`; code that runs uses `casesOn` and `partial def`, see `memory.lean`).
-/

inductive N where
  | zero : N
  | succ : N → N

namespace N

def one : N := succ zero
def two : N := succ one
def three : N := succ two
def four : N := succ three

noncomputable def add (m n : N) : N :=
  N.rec (motive := fun _ => N) m (fun _ acc => succ acc) n

noncomputable def mul (m n : N) : N :=
  N.rec (motive := fun _ => N) zero (fun _ acc => add acc m) n

noncomputable def pow (m n : N) : N :=
  N.rec (motive := fun _ => N) one (fun _ acc => mul acc m) n

theorem add_zero (n : N) : Eq (add n zero) n := Eq.refl

theorem add_succ (m n : N) : Eq (add m (succ n)) (succ (add m n)) := Eq.refl

theorem zero_add (n : N) : Eq (add zero n) n :=
  N.rec (motive := fun k => Eq (add zero k) k) Eq.refl (fun _ ih => congrArg succ ih) n

theorem succ_add (m n : N) : Eq (add (succ m) n) (succ (add m n)) :=
  N.rec (motive := fun k => Eq (add (succ m) k) (succ (add m k)))
    Eq.refl (fun _ ih => congrArg succ ih) n

theorem two_add_two : Eq (add two two) four := Eq.refl

theorem two_mul_two : Eq (mul two two) four := Eq.refl

theorem two_pow_two : Eq (pow two two) four := Eq.refl

end N
