prelude
import LwFix.List
import LwFix.Eval

/-!
Allocates about 200 MB, then finishes: `#eval` builds a list of 2 ^ 23 cells by doubling it 23
times in Lean's IR interpreter, and prints "built". Peak RSS is about 290 MB and it takes
about 1.2 s.

Under `lean -M <MB>` (or `--memory=<MB>`) with a limit between the ~95 MB a bare `lean`
starts with and that peak, the interpreter notices the limit while it allocates and the
process dies: SIGABRT, with "libc++abi: terminating due to uncaught exception of type
lean::memory_exception: excessive memory consumption detected at 'interpreter' ..." on
stderr, once its RSS reaches about the limit. (The kernel checks the same limit but reports
"(kernel) excessive memory consumption detected" as an ordinary error; the elaborator does
not check it.)
-/

/-- `xs` reversed onto `ys`, by a tail call: a loop, whatever the length. -/
partial def revAppend (xs ys : List N) : List N :=
  List.casesOn (motive := fun _ => List N) xs ys (fun x rest => revAppend rest (List.cons x ys))

/-- `acc` doubled once for every `succ` in `k`. -/
partial def doubleTimes (k : N) (acc : List N) : List N :=
  N.casesOn (motive := fun _ => List N) k acc (fun k' => doubleTimes k' (revAppend acc acc))

def describe (xs : List N) : String :=
  List.casesOn (motive := fun _ => String) xs "empty" (fun _ _ => "built")

def seven : N := N.succ (N.succ (N.succ N.four))
def eight : N := N.succ seven

#eval describe (doubleTimes eight (doubleTimes eight (doubleTimes seven (List.cons N.zero List.nil))))
