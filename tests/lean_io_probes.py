"""Lean snippets that perform IO while `lean` elaborates them, on the test toolchain.

The test toolchain (Lean 4.35.0) has no `Init`, so a snippet cannot call `IO.getEnv` and
friends; it declares them itself. Each probe is a `prelude` file importing `LwFix.Eval` (so
`#eval` can show a `String`) whose `#eval` runs a pure wrapper around Lean's runtime IO
primitives and shows the result as an info message:

- `write_file_snippet(path)`: `wrote`, or e.g. `no such file or directory: no such file or
  directory, file: /proc/nonexistent/x`;
- `getenv_snippet(name)`: the value, or `<unset>`;
- `run_process_snippet(cmd, args)`: `stdout: <out>stderr: <err>` of the finished process.

Why it works, and why every mirrored declaration has its shape:

- `#eval` runs code in the IR interpreter. For an `@[extern]` declaration the interpreter
  ignores the C name and looks up the *Lean* name, mangled, in the running process: the
  symbols `l_<Name>___boxed` or `l_<Name>` (a declaration named `getEnvRaw` fails with
  "Could not find native implementation of external declaration 'getEnvRaw' (symbols
  'l_getEnvRaw___boxed' or 'l_getEnvRaw')"). `lean` links `libleanshared.so`, which contains
  all of `Init`, so the externs here reuse the real names, whose boxed wrappers call the
  runtime: `IO.getEnv` -> `lean_io_getenv`, `IO.FS.Handle.mk` -> `lean_io_prim_handle_mk`,
  `IO.FS.Handle.putStr` -> `lean_io_prim_handle_put_str`, `IO.FS.Handle.flush` ->
  `lean_io_prim_handle_flush` (declared in lean4 `src/Init/System/IO.lean`, implemented in
  `src/runtime/io.cpp`); `IO.Process.output` (`src/Init/System/IO.lean`, compiled Lean that
  calls `lean_io_process_spawn` of `src/runtime/process.cpp`); `String.append` ->
  `lean_string_append`, `Array.mkEmpty`, `Array.push` (`src/Init/Data/String/Defs.lean`,
  `src/Init/Prelude.lean`; C in `src/include/lean/lean.h`). Argument lists, including the erased
  type argument `{α}` of the `Array` functions, and the borrow annotations (`@&`) are the
  real ones, so the boxed wrappers get what they expect and reference counts come out right.
  `IO.Error.toString` is out of reach: it is `@[export lean_io_error_to_string]`, so there is
  no `l_IO_Error_toString`, and a non-extern declaration of the file being checked is never
  replaced by native code (a mirrored `IO.Error.instToString` runs its own default value).
- In Lean 4.35 `IO`/`BaseIO` are `EST`/`ST` (`src/Init/System/ST.lean`):
  `EST ε σ α := Void σ → EST.Out ε σ α`, and the compiler erases `Void σ` entirely. So a
  compiled primitive takes no world argument and returns
  - for `BaseIO α`: the `α` itself (`ST.Out` is a structure with one relevant field, hence
    unboxed): `lean_io_getenv` returns an `Option String` (`none` = `box(0)`, `some` = tag 1
    with one field), so the mirror is a *pure* function `IO.getEnv : @& String → Option String`;
  - for `IO α`: an `EST.Out` object, `ok a` = tag 0 or `error e` = tag 1, each with exactly
    one object field (the state field is gone: `lean_io_prim_handle_put_str` allocates 16
    bytes, header `num_objs = 1`). The mirror `EST.Out α` has those two constructors in that
    order, with one field each.
- `IO.FS.Mode` (`read | write | writeNew | readWrite | append`) and `IO.Process.Stdio`
  (`piped | inherit | null`) are enumerations passed as bytes: only the constructor order
  matters. `IO.FS.Handle` and `Array` are runtime objects the code never opens, so `axiom`
  types do; `System.FilePath` is a one-field structure, so a `String` stands in.
- `IO.Error` (`src/Init/System/IOError.lean`) has 19 constructors; the mirror keeps their
  order (the tag) and their object fields (`filename`, `details`) and drops the scalar
  `osCode : UInt32`: object fields come first in a constructor object, so the field indices
  are unchanged, and the value is only read, never built or freed by mirror code. Checked
  against the binary: `lean_mk_io_error_no_file_or_directory` builds tag 11 with 2 object
  fields, `lean_mk_io_error_eof` returns `box(17)`, `lean_mk_io_user_error` builds tag 18.
  `IO.Process.Output` drops its `exitCode : UInt32` the same way (`stdout`, `stderr` stay
  object fields 0 and 1). `IO.Process.SpawnArgs` is built by the snippet, so it is complete:
  object fields `toStdioConfig` (a parent structure is a field), `cmd`, `args`, `cwd`, `env`,
  then the bytes `inheritEnv`, `setsid`, which `lean_io_process_spawn` reads at offsets
  `5 * sizeof(void*)` and `+ 1`; `StdioConfig` is an object with three scalar bytes.
- Pattern matching needs `Init`, so the probes use `casesOn` with an explicit motive. An
  `opaque` needs an `Inhabited` instance, or `Nonempty` plus `Classical.ofNonempty`
  (declared here as axioms for `Array`). `set_option genCtorIdx false` as in `LwFix.Eval`.

Caveats: a mirror whose constructor order or field count differs from the runtime value makes
the interpreter read the wrong field (SIGSEGV, no diagnostic); a wrong borrow annotation
over- or under-releases an argument. When the executable cannot be run, the forked child
reports `could not execute external process '<cmd>'` on its *stderr* (the result is `ok`),
and it also writes out whatever `lean`'s own stdout buffer held at the fork, so with plain
`lean file.lean` the messages of earlier `#eval`s show up again in that child's stdout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["getenv_snippet", "lean_string", "run_process_snippet", "write_file_snippet"]


def lean_string(text: str) -> str:
    """A Lean string literal for `text`."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_HEADER = """\
prelude
import LwFix.Eval
set_option genCtorIdx false

inductive Option (α : Type) where
  | none : Option α
  | some (val : α) : Option α
"""

_GETENV = """
instance {α : Type} : Inhabited (Option α) := ⟨Option.none⟩

@[extern "lean_io_getenv"]
opaque IO.getEnv (var : @& String) : Option String

def probeGetEnv (name : String) : String :=
  Option.casesOn (motive := fun _ => String) (IO.getEnv name) "<unset>" (fun v => v)

#eval probeGetEnv NAME
"""

_IO = """
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

"""

_WRITE = """
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

#eval probeWrite PATH TEXT
"""


_PROCESS = """
axiom Array : Type → Type

class inductive Nonempty (α : Sort u) : Prop where
  | intro (val : α) : Nonempty α

/-- `opaque` builds its (unused) value from a `Nonempty` instance with this. -/
axiom Classical.ofNonempty {α : Sort u} [Nonempty α] : α

axiom Array.instNonempty {α : Type} : Nonempty (Array α)
attribute [instance] Array.instNonempty

@[extern "lean_mk_empty_array_with_capacity"]
opaque Array.mkEmpty {α : Type} (c : @& Nat) : Array α

@[extern "lean_array_push"]
opaque Array.push {α : Type} (a : Array α) (v : α) : Array α

structure Prod (α β : Type) where
  fst : α
  snd : β

inductive IO.Process.Stdio where
  | piped | inherit | null

structure IO.Process.StdioConfig where
  stdin : IO.Process.Stdio
  stdout : IO.Process.Stdio
  stderr : IO.Process.Stdio

/-- Object fields 0-4, then the `Bool`s as bytes 0 and 1 of the scalar area. -/
structure IO.Process.SpawnArgs where
  toStdioConfig : IO.Process.StdioConfig
  cmd : String
  args : Array String
  cwd : Option String
  env : Array (Prod String (Option String))
  inheritEnv : Bool
  setsid : Bool

/-- `IO.Process.Output` without its scalar `exitCode : UInt32`. -/
structure IO.Process.Output where
  stdout : String
  stderr : String

@[extern "lean_io_process_output"]
opaque IO.Process.output (args : IO.Process.SpawnArgs) (input? : @& Option String) :
    EST.Out IO.Process.Output

def probeRun (cmd : String) (args : Array String) : String :=
  orError (IO.Process.output
      ⟨⟨IO.Process.Stdio.null, IO.Process.Stdio.piped, IO.Process.Stdio.piped⟩, cmd, args,
       Option.none, Array.mkEmpty 0, Bool.true, Bool.false⟩ Option.none)
    (fun o => String.append (String.append (String.append "stdout: " o.stdout) "stderr: ") o.stderr)

#eval probeRun CMD ARGS
"""


def getenv_snippet(name: str) -> str:
    """A snippet whose `#eval` shows the value of environment variable `name`, or `<unset>`."""
    return _HEADER + _GETENV.replace("NAME", lean_string(name))


def write_file_snippet(path: str, text: str = "written by a Lean snippet\n") -> str:
    """A snippet whose `#eval` writes `text` to `path` (created or truncated) and shows
    `wrote`, or the error, e.g. `no such file or directory: no such file or directory, file:
    /proc/nonexistent/x`."""
    return _HEADER + _IO + _WRITE.replace("PATH TEXT", f"{lean_string(path)} {lean_string(text)}")


def run_process_snippet(cmd: str, args: Sequence[str] = ()) -> str:
    """A snippet whose `#eval` runs `cmd` with `args` (stdin `/dev/null`, environment
    inherited) to completion and shows `stdout: <its stdout>stderr: <its stderr>`, or the
    error text (an `EST.Out.error`, e.g. a failed `pipe`; a command that cannot be executed
    still gives `ok`, its message on stderr)."""
    array = "(Array.mkEmpty 0)"
    for arg in args:
        array = f"(Array.push {array} {lean_string(arg)})"
    return _HEADER + _IO + _PROCESS.replace("CMD ARGS", f"{lean_string(cmd)} {array}")


def shown_by_eval(result: Any) -> str:
    """The text a probe's ``#eval`` showed: the one information message of an ``ok`` result."""
    infos = [m.text for m in result.messages if m.severity == "information"]
    assert result.verdict == "ok" and len(infos) == 1, result
    return str(infos[0])
