-- A hostile snippet: while Lean elaborates it, its #eval writes a file through Lean's own
-- runtime (the declarations mirror Init's; see tests/lean_io_probes.py). examples/sandbox/run.py
-- replaces TARGET with a path in your home directory. In a sandbox the write fails.
prelude
import LwFix.Eval
set_option genCtorIdx false

inductive Option (α : Type) where
  | none : Option α
  | some (val : α) : Option α

/-- `IO.Error` of Lean 4.35 without the scalar `osCode : UInt32` fields. -/
inductive IO.Error where
  | alreadyExists (filename : Option String) (details : String)
  | otherError (details : String)
  | resourceBusy (details : String)
  | resourceVanished (details : String)
  | unsupportedOperation (details : String)
  | hardwareFault (details : String)
  | unsatisfiedConstraints (details : String)
  | illegalOperation (details : String)
  | protocolError (details : String)
  | timeExpired (details : String)
  | interrupted (filename : String) (details : String)
  | noFileOrDirectory (filename : String) (details : String)
  | invalidArgument (filename : Option String) (details : String)
  | permissionDenied (filename : Option String) (details : String)
  | resourceExhausted (filename : Option String) (details : String)
  | inappropriateType (filename : Option String) (details : String)
  | noSuchThing (filename : Option String) (details : String)
  | unexpectedEof
  | userError (msg : String)

/-- What an `IO α` primitive returns once the `Void` world is erased. -/
inductive EST.Out (α : Type) where
  | ok : α → EST.Out α
  | error : IO.Error → EST.Out α

instance {α : Type} : Inhabited (EST.Out α) := ⟨EST.Out.error IO.Error.unexpectedEof⟩

@[extern "lean_string_append"]
opaque String.append (a : String) (b : @& String) : String

def withFile (kind : String) (fn : String) (details : String) : String :=
  String.append (String.append (String.append (String.append kind ": ") details) ", file: ") fn

def withOptFile (kind : String) (fn : Option String) (details : String) : String :=
  Option.casesOn (motive := fun _ => String) fn
    (String.append (String.append kind ": ") details) (fun f => withFile kind f details)

def withDetails (kind : String) (details : String) : String :=
  String.append (String.append kind ": ") details

def IO.Error.describe (e : IO.Error) : String :=
  IO.Error.casesOn (motive := fun _ => String) e
    (withOptFile "already exists")
    (withDetails "other error")
    (withDetails "resource busy")
    (withDetails "resource vanished")
    (withDetails "unsupported operation")
    (withDetails "hardware fault")
    (withDetails "unsatisfied constraints")
    (withDetails "illegal operation")
    (withDetails "protocol error")
    (withDetails "time expired")
    (withFile "interrupted")
    (withFile "no such file or directory")
    (withOptFile "invalid argument")
    (withOptFile "permission denied")
    (withOptFile "resource exhausted")
    (withOptFile "inappropriate type")
    (withOptFile "no such thing")
    "end of file"
    (fun msg => msg)

def orError {α : Type} (r : EST.Out α) (k : α → String) : String :=
  EST.Out.casesOn (motive := fun _ => String) r k (fun e => IO.Error.describe e)


axiom IO.FS.Handle : Type

inductive IO.FS.Mode where
  | read | write | writeNew | readWrite | append

@[extern "lean_io_prim_handle_mk"]
opaque IO.FS.Handle.mk (fn : @& String) (mode : IO.FS.Mode) : EST.Out IO.FS.Handle

@[extern "lean_io_prim_handle_put_str"]
opaque IO.FS.Handle.putStr (h : @& IO.FS.Handle) (s : @& String) : EST.Out Unit

@[extern "lean_io_prim_handle_flush"]
opaque IO.FS.Handle.flush (h : @& IO.FS.Handle) : EST.Out Unit

def probeWrite (path : String) (text : String) : String :=
  orError (IO.FS.Handle.mk path IO.FS.Mode.write) (fun h =>
    orError (IO.FS.Handle.putStr h text) (fun _ =>
      orError (IO.FS.Handle.flush h) (fun _ => "wrote")))

#eval probeWrite "TARGET" "written by escape.lean\n"

