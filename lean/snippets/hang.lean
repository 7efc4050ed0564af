prelude
import LwFix.Nat
import LwFix.Eval

/-!
Never finishes: `#eval` runs a tail-recursive loop in Lean's IR interpreter, which turns the
tail call into a jump. One core stays at 100 %, memory stays flat (nothing is allocated), and
nothing is printed. Heartbeats do not stop it: the interpreter does not count them. Only
killing the process ends it.
-/

partial def spin (n : N) : String := spin n

#eval spin N.zero
