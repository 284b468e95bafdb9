"""Carry tvmdeploy's own errors across TVM's FFI.

A TvmDeployError raised inside a pass's `transform_function` reaches the caller as a
plain RuntimeError (TVM's FFI keeps the text, not the type), which the CLI would call
"unexpected" (exit 2). Our passes mark their transform with `@carries_errors`; whoever
applies a pass does it through `apply_pass`, which re-raises the original error.
"""

from __future__ import annotations

import functools
import threading

from ...errors import TvmDeployError

_pending = threading.local()


def carries_errors(transform):
    @functools.wraps(transform)
    def wrapper(*args, **kwargs):
        try:
            return transform(*args, **kwargs)
        except TvmDeployError as e:
            _pending.error = e
            raise

    return wrapper


def apply_pass(tvm_pass, mod):
    """tvm_pass(mod), re-raising a TvmDeployError the pass raised as itself."""
    _pending.error = None
    try:
        return tvm_pass(mod)
    except TvmDeployError:
        raise
    except Exception:
        error, _pending.error = getattr(_pending, "error", None), None
        if error is not None:
            raise error from None
        raise
