"""The hook side of the instrumentation. This file runs ONLY inside the sandbox, as the payload's
prelude: it must import nothing from the project (the project's files are not visible there).

`_pico_main_(source, values, nonce)` executes the instrumented snippet with the predicted values
(key -> Python code; an expression, or statements that assign `value`) and prints, last, one line
`<nonce>{json trace}`: the executed markers, how the run ended, and which injected values the
failing line used (for error feedback).
"""
import builtins
import json
import sys
import traceback
import types

_STATE = {"executed": [], "seen": set(), "line": None, "used_on_line": [], "values": {}, "cache": {}}


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
                    raise NameError("the value code must be an expression or assign `value`")
                cache[key] = namespace["value"]
        except Exception as err:
            raise _PicoBadValue(key, iid, "%s: %s" % (type(err).__name__, err))
    _STATE["used_on_line"].append(key)
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


def _pico_import_(iid, module, as_name):
    import importlib

    try:
        imported = importlib.import_module(module)
        return imported if as_name else importlib.import_module(module.split(".")[0])
    except ImportError:
        return _pico_value_("import#" + module, iid)


def _pico_from_(iid, module, name, level):
    import importlib

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


def _pico_main_(source, values, nonce):
    _STATE["values"] = dict(values)
    namespace = {"__name__": "__main__", "__builtins__": builtins, "_pico_l_": _pico_l_, "_pico_n_": _pico_n_,
                 "_pico_a_": _pico_a_, "_pico_import_": _pico_import_, "_pico_from_": _pico_from_}
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
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == "<snippet>"]
        trace = {"status": "error", "error_type": type(err).__name__, "error": str(err)[:500],
                 "snippet_frame_line": frames[-1].lineno if frames else None}
    trace["executed"] = _STATE["executed"]
    trace["marker"] = _STATE["line"]
    trace["used_on_line"] = _STATE["used_on_line"]
    sys.stdout.flush()
    sys.stdout.write("\n" + nonce + json.dumps(trace) + "\n")
    sys.stdout.flush()
