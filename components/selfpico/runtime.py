"""The hook side of the instrumentation. This file runs inside the sandbox, as the payload's
prelude: it must import nothing from the project (the project's files are not visible there). The
host imports it only for `HOOK_NAMES` (the instrumentation's reserved names).

`_pico_main_(source, values)` executes the instrumented snippet with the predicted values
(key -> Python code; an expression, or statements that assign `value`) and prints, last, one line
`TRACE_PREFIX <hmac> {json trace}`: the executed markers, how the run ended, and where it failed.

The HMAC key arrives on stdin and is read, before the snippet runs, straight into a bytearray that
only a closure holds; stdin is closed then. It is in no file (this program, /sandbox_code/main.py,
holds none), so a snippet cannot print a trace the host accepts. (Code in the same process can
still reach the runtime's objects through introspection: coverage of a deliberately hostile
snippet is not evidence; the host only guarantees such a snippet fails alone.)
"""

import builtins
import hmac
import importlib
import json
import operator
import os
import sys
import traceback
import types

TRACE_PREFIX = "@@pico-trace@@"
# The hooks the instrumented snippet calls (and so the names a snippet may not use itself).
HOOK_NAMES = (
    "_pico_l_",
    "_pico_n_",
    "_pico_a_",
    "_pico_import_",
    "_pico_from_",
    "_pico_aug_",
    "_pico_aug_attr_",
    "_pico_aug_item_",
)

_STATE = {"executed": [], "seen": set(), "line": None, "used_on_line": [], "values": {}, "cache": {}, "used": []}


class _PicoMissing(BaseException):
    """A name/attribute/import with no predicted value yet: the run stops and asks the host."""

    def __init__(self, key, iid):
        super().__init__(key)
        self.key, self.iid = key, iid


class _PicoBadValue(BaseException):
    """The predicted value's code raised: fed back to the predictor."""

    def __init__(self, key, iid, error):
        super().__init__(key)
        self.key, self.iid, self.error = key, iid, error


def _pico_l_(iid):
    if iid not in _STATE["seen"]:
        _STATE["seen"].add(iid)
        _STATE["executed"].append(iid)
    _STATE["line"] = iid
    _STATE["used_on_line"] = []


def _pico_value_(key, iid):
    cache = _STATE["cache"]
    if key not in cache:  # one value per key for the whole run, as LExecutor caches per name
        code = _STATE["values"].get(key)
        if code is None:
            raise _PicoMissing(key, iid)
        namespace = {"__builtins__": builtins, "types": types}
        try:
            try:
                cache[key] = eval(compile(code, "<value:" + key + ">", "eval"), namespace)
            except SyntaxError:
                exec(compile(code, "<value:" + key + ">", "exec"), namespace)
                if "value" not in namespace:
                    raise NameError("the value code must be an expression or assign `value`")  # noqa: B904
                cache[key] = namespace["value"]
        except Exception as err:
            raise _PicoBadValue(key, iid, "%s: %s" % (type(err).__name__, err))  # noqa: B904, UP031 - runs in the snippet's process; its traceback is parsed as is
    _STATE["used_on_line"].append(key)
    if key not in _STATE["used"]:
        _STATE["used"].append(key)
    return cache[key]


def _pico_n_(iid, name, thunk):
    try:
        return thunk()
    except NameError:
        return _pico_value_("name#" + name, iid)


def _pico_a_(iid, obj, attr):
    try:
        return getattr(obj, attr)
    except AttributeError:
        if isinstance(obj, types.ModuleType) and obj.__name__ in sys.modules and not getattr(obj, "_pico_fake_", False):
            raise  # a real module lacks it: a genuine error, not an unknown value
        value = _pico_value_("attr#" + attr, iid)
        try:
            setattr(obj, attr, value)  # later reads see the same value
        except Exception:
            pass
        return value


def _pico_aug_(op, current, value):
    return getattr(operator, op)(current, value)


def _pico_aug_attr_(iid, obj, attr, op, value_thunk):
    setattr(obj, attr, getattr(operator, op)(_pico_a_(iid, obj, attr), value_thunk()))


def _pico_aug_item_(obj, key, op, value_thunk):
    obj[key] = getattr(operator, op)(obj[key], value_thunk())


def _pico_import_(iid, module, as_name):
    try:
        imported = importlib.import_module(module)
        return imported if as_name else importlib.import_module(module.split(".")[0])
    except ImportError:
        return _pico_value_("import#" + module, iid)


def _pico_from_(iid, module, name, level):
    try:
        if level:
            raise ImportError("relative import in a snippet")
        imported = importlib.import_module(module)
        try:
            return getattr(imported, name)
        except AttributeError:
            return importlib.import_module(module + "." + name)
    except ImportError:
        return _pico_value_("import#" + (module + "." if module else "") + name, iid)


def _pico_drive_(result, limit=10000):
    """A wrapped function body that yields is a generator: run it, as a caller would."""
    if isinstance(result, types.GeneratorType):
        for i, _ in enumerate(result):
            if i >= limit:
                break


def _pico_read_key_():
    """The HMAC key from stdin, read into a bytearray (no str/bytes copy stays behind); stdin closed."""
    key = bytearray(64)
    view, got = memoryview(key), 0
    while got < len(key):
        n = os.readv(0, [view[got:]])
        if n == 0:
            break
        got += n
        if b"\n" in key[:got]:
            break
    view.release()
    del key[key.find(b"\n") if b"\n" in key[:got] else got :]
    os.close(0)
    try:
        os.open("/dev/null", os.O_RDONLY)  # fd 0 again, so input() sees end of file, not another file
    except OSError:
        pass

    def sign(data):
        return hmac.new(bytes(key), data, "sha256").hexdigest()

    return sign


def _pico_failure_(err):
    """Where in the snippet an exception was raised: the innermost snippet frame's position."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == "<snippet>"]
    if not frames:
        return {}
    f = frames[-1]
    return {
        "position": [
            f.lineno,
            getattr(f, "colno", None),
            getattr(f, "end_lineno", None),
            getattr(f, "end_colno", None),
        ],
        "snippet_frame_line": f.lineno,
    }


def _pico_main_(source, values):
    sign = _pico_read_key_()
    _STATE["values"] = dict(values)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    namespace.update({name: globals()[name] for name in HOOK_NAMES})
    trace = {"status": "ok"}
    try:
        exec(compile(source, "<snippet>", "exec"), namespace)
        _pico_drive_(namespace.get("_pico_result_"))
    except _PicoMissing as err:
        trace = {"status": "missing", "key": err.key, "iid": err.iid}
    except _PicoBadValue as err:
        trace = {"status": "bad_value", "key": err.key, "iid": err.iid, "error": err.error}
    except SystemExit:
        trace = {"status": "exit"}
    except BaseException as err:
        try:
            message = str(err)[:500]
        except BaseException:  # a hostile __str__
            message = "<unprintable>"
        trace = {"status": "error", "error_type": type(err).__name__[:100], "error": message}
        trace.update(_pico_failure_(err))
    trace["executed"] = _STATE["executed"]
    trace["marker"] = _STATE["line"]
    trace["used_on_line"] = _STATE["used_on_line"]
    trace["used"] = _STATE["used"]
    data = json.dumps(trace)
    sys.stdout.flush()
    sys.stdout.write("\n" + TRACE_PREFIX + " " + sign(data.encode()) + " " + data + "\n")
    sys.stdout.flush()
