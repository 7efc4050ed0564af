prelude
import LwFix.Nat
import LwFix.Sorry

/-!
One error, Lean's deterministic timeout: the theorem is true (4 ^ 3 = 2 ^ 6 = 64, and without
the option it checks clean in a few milliseconds), but checking `Eq.refl` against it unfolds
the unary arithmetic, which needs more than the 20 000 heartbeats (`maxHeartbeats` counts
thousands of small allocations) allowed here. Reported over the whole declaration:
"(deterministic) timeout at `isDefEq`, maximum number of heartbeats (20) has been reached",
kind `runtime.maxHeartbeats`.
-/

set_option maxHeartbeats 20 in
theorem four_cubed : Eq (N.pow N.four N.three) (N.pow N.two (N.add N.four N.two)) := Eq.refl
