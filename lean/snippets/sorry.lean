prelude
import LwFix.Nat
import LwFix.Sorry

/-! One warning, "declaration uses `sorry`", at the theorem's name; no errors. -/

theorem add_comm_admitted (m n : N) : Eq (N.add m n) (N.add n m) := sorry
