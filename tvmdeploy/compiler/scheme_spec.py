"""The CLI spelling shared by --prune and --compress: SCHEME[:VALUE][,KEY=VALUE...]."""

from __future__ import annotations


def split_spec(spec: str, schemes: dict, error: type, noun: str, example: str, first_option):
    """(config class, scheme name, {option: text}) with each option checked against the
    class's fields; a bare value is the class's first option (first_option[cls])."""
    scheme, _, rest = spec.partition(":")
    scheme = scheme.strip()
    cls = schemes.get(scheme)
    if cls is None:
        raise error(f"unknown {noun} scheme {scheme!r}; choose {' or '.join(schemes)} (e.g. {example})")
    options: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key, value = (key.strip(), value) if eq else first_option(cls, item)
        if key not in cls.__dataclass_fields__ or key == "max_accuracy_drop":
            raise error(f"{scheme} {noun} has no option {key!r}")
        options[key] = value
    return cls, scheme, options
