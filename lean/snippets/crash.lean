prelude
import LwFix.Eval

/-!
Kills the `lean` process with a native stack overflow: "Stack overflow detected. Aborting."
(with a blank line before it) on stderr and SIGABRT; nothing on stdout. It takes 0.7–1.7 s and
peaks at about 1.1 GB RSS, because the whole elaboration thread stack (about 1 GiB by default)
gets touched; under `lean --tstack=8192` the same happens in 0.06 s at 107 MB.

Why not plain recursion in the snippet: `#eval` runs code in Lean's IR interpreter, which
checks its own depth and fails with "deep recursion was detected at 'interpreter'" (also
fatal, but only after printing one stack line per frame: 19 MB and 3.6 s). So the recursion
is moved into native code: an `extern` declaration named `Nat.repeat` makes the interpreter
call the compiled `Nat.repeat` of the running `lean` (symbol `l_Nat_repeat___boxed`), which
recurses `n` deep before it calls `f` once: `f (repeat f n a)`. The declaration has the real
signature, so nothing but the depth is wrong.
-/

universe u

@[extern "lean_nat_repeat"]
opaque Nat.repeat {α : Type u} (f : α → α) (n : Nat) (a : α) : α := a

#eval Nat.repeat (fun s => s) 1000000000 "never printed"
