prelude
import LwFix.Logic

/-!
# LwFix.Sorry

What the elaborator needs to elaborate `sorry` in Lean 4.35. A `sorry` written by the user
becomes `sorryAx (Lean.Name → α) false tag`, where the tag is a `Lean.Name` built from string
and `Nat` literals (`OfNat.ofNat Nat n (instOfNatNat n)`) that encodes the source position.
The synthetic `sorry` Lean puts in place of a term that failed to elaborate is
`sorryAx (Unit → α) true (Function.const Unit tag)`. Without these declarations either one is
reported as an extra error ("internal exception #3", or "Unknown constant `Unit`"), so a file
that should report exactly its own errors imports this module.

Importing this module puts a `Nat` in the environment, and from then on Lean builds a
`ctorIdx` for every new inductive type, which needs declarations this prelude does not have
(`cond`, `Nat.decEq`, ...): the error is "failed to construct `T.ctorIdx` ...". Files that
import it and declare inductive types say `set_option genCtorIdx false` first, as this one does.
-/

set_option genCtorIdx false

universe u v

inductive Bool where
  | false : Bool
  | true : Bool

/-- The type of natural-number literals; used here only inside `sorry` tags. -/
inductive Nat where
  | zero : Nat
  | succ (n : Nat) : Nat

class OfNat (α : Type u) (_ : Nat) where
  ofNat : α

instance instOfNatNat (n : Nat) : OfNat Nat n where
  ofNat := n

inductive Unit where
  | unit : Unit

def Function.const {α : Sort u} (β : Sort v) (a : α) : β → α := fun _ => a

/-- The type of string literals; opaque, since nothing here computes with strings. -/
axiom String : Type

namespace Lean

inductive Name where
  | anonymous : Name
  | str (pre : Name) (s : String) : Name
  | num (pre : Name) (i : Nat) : Name

end Lean

/-- What `sorry` elaborates to; `synthetic` is `true` for the ones Lean inserts after an error. -/
axiom sorryAx (α : Sort u) (synthetic : Bool) : α
