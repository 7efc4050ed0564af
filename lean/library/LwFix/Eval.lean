prelude
import LwFix.Sorry

/-!
# LwFix.Eval

Just enough for `#eval` of a `String`. `#eval` compiles the term, runs it in Lean's IR
interpreter and shows the result through `Std.Format.text (toString e)`, which the running
`lean` reads as its own `Std.Format`: so the first four constructors below mirror the real
`Std.Format` in order and shape (`text` is constructor 3 with one field); with any other
layout `lean` misreads the value and dies with SIGSEGV.
-/

set_option genCtorIdx false

universe u v

class Inhabited (α : Sort u) where
  default : α

class ToString (α : Type u) where
  toString : α → String

inductive Std.Format where
  | nil : Std.Format
  | line : Std.Format
  | align (force : Bool) : Std.Format
  | text : String → Std.Format

instance : Inhabited String := ⟨"default"⟩

instance : ToString String := ⟨fun s => s⟩

instance {α : Sort u} {β : Sort v} [Inhabited β] : Inhabited (α → β) := ⟨fun _ => Inhabited.default⟩
