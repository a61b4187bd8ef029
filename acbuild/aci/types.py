"""appc value types (digest section 2 and 3.5/3.6).

Each check returns a problem message, or None when the value is fine, so that
callers can attach a position or a prefix. Messages copy actool 0.8.11's wording
where it has one, so a user comparing the two tools sees the same words.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any
from urllib.parse import urlsplit

# types.ValidOSArch in appc 0.8.11 (authoritative over the spec text).
VALID_OS_ARCH: dict[str, list[str]] = {
    "linux": ["amd64", "i386", "aarch64", "aarch64_be", "armv6l", "armv7l", "armv7b", "ppc64", "ppc64le", "s390x"],
    "freebsd": ["amd64", "i386", "arm"],
    "darwin": ["x86_64", "i386"],
}

RESOURCE_ISOLATORS = {
    "resource/cpu",
    "resource/memory",
    "resource/block-bandwidth",
    "resource/block-iops",
    "resource/network-bandwidth",
}
# Isolators that may appear at most once in a set (others may repeat).
SINGLE_ISOLATORS = {
    "os/linux/seccomp-retain-set",
    "os/linux/seccomp-remove-set",
    "os/linux/oom-score-adj",
    "os/linux/cpu-shares",
    "os/linux/selinux-context",
    "os/unix/sysctl",
}
KNOWN_ISOLATORS = RESOURCE_ISOLATORS | SINGLE_ISOLATORS | {
    "os/linux/capabilities-retain-set",
    "os/linux/capabilities-remove-set",
    "os/linux/no-new-privileges",
}

_ID_CHARS = re.compile(r"^[a-z0-9._~/-]*$")
# The documented regex, plus "/~" (example.com/~bob/database is in the spec's own list
# of valid identifiers).
_ID_STRICT = re.compile(r"^[a-z0-9]+(([-._~/]|/~)[a-z0-9]+)*$")
_NAME_CHARS = re.compile(r"^[a-z0-9-]*$")
_ALNUM = re.compile(r"[a-z0-9]")
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z_0-9.-]*$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
_QUANTITY_SUFFIX = re.compile(r"^(|[numkMGTPE]|[KMGTPE]i|[eE][-+]?[0-9]+)$")
_ERRNO = re.compile(r"^E[A-Z0-9]*$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")

STRICT_SUFFIX = " (acbuild is stricter than actool here)"


def acidentifier_problem(s: str, strict: bool = False) -> str | None:
    """ACIdentifier: image, label, annotation and isolator names.

    strict also applies the documented regex, which forbids runs like `//` or `._`.
    """
    if s == "":
        return "ACIdentifier cannot be empty"
    if not _ID_CHARS.match(s):
        return 'ACIdentifier must contain only lower case alphanumeric characters plus "-._~/"'
    if not (_ALNUM.match(s[0]) and _ALNUM.match(s[-1])):
        return "ACIdentifier must start and end with only lower case alphanumeric characters"
    if strict and not _ID_STRICT.match(s):
        return f'ACIdentifier "{s}" must not contain runs of "-._~/" such as "//"' + STRICT_SUFFIX
    return None


def acname_problem(s: str) -> str | None:
    """ACName: port, mount point, pod app and volume names."""
    if s == "":
        return "ACName cannot be empty"
    if not _NAME_CHARS.match(s):
        return 'ACName must contain only lower case alphanumeric characters plus "-"'
    if not (_ALNUM.match(s[0]) and _ALNUM.match(s[-1])):
        return "ACName must start and end with only lower case alphanumeric characters"
    return None


def semver_problem(s: str) -> str | None:
    m = _SEMVER.match(s)
    if not m:
        return "SemVer is bad"
    if not m.group(4) and not m.group(5) and all(int(g) == 0 for g in m.groups()[:3]):
        return "SemVer cannot be zero"
    return None


def image_id_problem(s: str, strict: bool = True) -> str | None:
    """An image ID: `sha512-` + hex. actool only checks the shape."""
    parts = s.split("-")
    if len(parts) != 2:
        return "badly formatted hash string"
    if parts[0] != "sha512":
        return f"unrecognized hash type: {parts[0]}"
    if parts[1] == "":
        return "unexpected empty hash value"
    if strict and not _HEX128.match(parts[1]):
        return f'image ID "{s}" must be sha512- and 128 lowercase hex digits' + STRICT_SUFFIX
    return None


def os_arch_problem(os: str, arch: str | None) -> str | None:
    """The os/arch label pair; arch is only checked when os is given."""
    if os not in VALID_OS_ARCH:
        return f'bad os "{os}" (must be one of: [{" ".join(sorted(VALID_OS_ARCH))}])'
    if arch is not None and arch not in VALID_OS_ARCH[os]:
        return f'bad arch "{arch}" for {os} (must be one of: [{" ".join(VALID_OS_ARCH[os])}])'
    return None


def label_name_problem(s: str) -> str | None:
    """A label name: an ACIdentifier, and not "name" (the image name has its own field)."""
    if s == "name":
        return 'a label cannot be called "name" (the image name is set with NAME or set-name)'
    return acidentifier_problem(s)


def port_problem(port: int, count: int = 1) -> str | None:
    """A port and its range (actool's wording)."""
    if not 1 <= port <= 65535:
        return "port must be in 1-65535 range"
    if count < 1 or port + count > 65536:
        return "end of port range must be in 1-65535 range"
    return None


def absolute_path_problem(path: str, what: str = "the path") -> str | None:
    """Working directories, mount points, pathWhitelist entries."""
    if not path.startswith("/"):
        return f'{what} must be absolute, not "{path}"'
    return None


def env_name_problem(s: str) -> str | None:
    if s == "":
        return "environment variable name must not be empty"
    if not _ENV_NAME.match(s):
        return f'environment variable does not have valid identifier "{s}"'
    return None


def url_problem(s: str) -> str | None:
    """homepage/documentation annotations: an http or https URL."""
    if s.startswith(":"):
        return f'bad URL: parse "{s}": missing protocol scheme'
    try:
        scheme = urlsplit(s).scheme
    except ValueError as e:
        return f'bad URL: parse "{s}": {e}'
    if scheme not in ("http", "https"):
        return "bad URL scheme, must be http/https"
    return None


def date_problem(s: str) -> str | None:
    """The created annotation: RFC 3339 with a T (Go's time.RFC3339)."""
    if _RFC3339.match(s):
        from datetime import datetime  # here: 2 ms that most commands never need

        try:
            datetime.fromisoformat(s.replace("Z", "+00:00"))
            return None
        except ValueError:
            pass
    return f'bad Date: parsing time "{s}" as "2006-01-02T15:04:05Z07:00"'


def quantity_problem(s: Any, strict: bool = False) -> str | None:
    """A resource quantity (Kubernetes syntax as vendored by appc 0.8.11, which trims
    surrounding spaces). strict also refuses a number with no digit ("." or "-."),
    which actool reads as zero."""
    if isinstance(s, bool) or not isinstance(s, (str, int, float)):
        return "resource quantity must be a string or a number"
    if not isinstance(s, str):
        return None if math.isfinite(s) else "bad quantity"
    s = s.strip()
    m = _QUANTITY.match(s)
    if not m:
        return "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    number = m.group(1)
    if number.count(".") > 1:
        return "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    if strict and not any(c.isdigit() for c in number):
        return f'resource quantity "{s}" has no digits (actool reads it as 0)' + STRICT_SUFFIX
    if not _QUANTITY_SUFFIX.match(m.group(2)):
        return "unable to parse quantity's suffix"
    return None


def _go_type_error(value: Any, want: str) -> str:
    kind = {bool: "bool", str: "string", list: "array", dict: "object"}.get(type(value), "number")
    return f"cannot unmarshal {kind} into an isolator value of type {want}"


def _int_in(value: Any, name: str, lo: int, hi: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            return _go_type_error(value, "int")
    if not lo <= value <= hi:
        return f"{name} must be between {lo} and {hi}, got {value}"
    return None


def _set_problem(value: Any, seccomp: bool) -> str | None:
    if not isinstance(value, dict):
        return _go_type_error(value, "object")
    items = value.get("set")
    if items is not None and (not isinstance(items, list) or not all(isinstance(i, str) for i in items)):
        return "set must be a list of strings"
    if not items:
        return "set must be non-empty"
    if seccomp:
        errno = value.get("errno", "")
        if not isinstance(errno, str):
            return _go_type_error(errno, "string")
        if errno and not errno.startswith("E"):
            return f"errno must start with an 'E' character, got {errno}"
        if errno and not _ERRNO.match(errno):
            return f"errno must contain only upper case characters, got {errno}"
    return None


def _resource_problem(name: str, value: Any, strict: bool) -> str | None:
    if not isinstance(value, dict):
        return _go_type_error(value, "resource value")
    default = value.get("default", False)
    if not isinstance(default, bool):
        return _go_type_error(default, "bool")
    for key in ("request", "limit"):
        if value.get(key) is not None:
            problem = quantity_problem(value[key], strict)
            if problem:
                return problem
    if name in ("resource/cpu", "resource/memory"):
        if default:
            return "default must be false"
    else:
        if not default:
            return "default must be true"
        if value.get("request") not in (None, ""):
            return "request not supported by this resource, must be empty"
    return None


def isolator_problem(name: str, value: Any, strict: bool = True) -> str | None:
    """The value check for one isolator (section 3.6); unknown names are invalid."""
    if name not in KNOWN_ISOLATORS:
        return "invalid isolator"
    if value is None:
        # actool panics here (Go nil pointer); a missing value is simply invalid.
        return f"isolator {name} has no value"
    if name in RESOURCE_ISOLATORS:
        return _resource_problem(name, value, strict)
    if name.startswith("os/linux/capabilities-"):
        return _set_problem(value, seccomp=False)
    if name.startswith("os/linux/seccomp-"):
        return _set_problem(value, seccomp=True)
    if name == "os/linux/no-new-privileges":
        return None if isinstance(value, bool) else _go_type_error(value, "bool")
    if name == "os/linux/oom-score-adj":
        return _int_in(value, name, -1000, 1000)
    if name == "os/linux/cpu-shares":
        return _int_in(value, name, 2, 262144)
    if name == "os/linux/selinux-context":
        if not isinstance(value, dict):
            return _go_type_error(value, "object")
        for key in ("user", "role", "type", "level"):
            field = value.get(key, "")
            if not isinstance(field, str):
                return _go_type_error(field, "string")
            if field == "" or (key != "level" and ":" in field):
                return f'invalid {key} value "{field}"'
        return None
    if name == "os/unix/sysctl":
        if not isinstance(value, dict):
            return _go_type_error(value, "object")
        for v in value.values():
            if not isinstance(v, str):
                return _go_type_error(v, "string")
        return None
    return None


def host_os_arch() -> tuple[str, str]:
    """The build host's os and arch in appc spelling (ToAppcOSArch)."""
    uname = os.uname()  # what platform.system() and machine() read, without importing platform
    system, machine = uname.sysname.lower(), uname.machine.lower()
    if system == "darwin":
        arch = {"x86_64": "x86_64", "amd64": "x86_64", "i386": "i386", "i686": "i386"}.get(machine, machine)
        return system, arch
    if system == "freebsd":
        arch = {"x86_64": "amd64", "amd64": "amd64", "i386": "i386", "i686": "i386"}.get(machine, "arm")
        return system, arch
    arch = {
        "x86_64": "amd64",
        "amd64": "amd64",
        "i386": "i386",
        "i486": "i386",
        "i586": "i386",
        "i686": "i386",
        "aarch64": "aarch64",
        "arm64": "aarch64",
        "aarch64_be": "aarch64_be",
        "armv6l": "armv6l",
        "armv7l": "armv7l",
        "armv8l": "armv7l",
        "armv7b": "armv7b",
        "ppc64": "ppc64",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
    }.get(machine, machine)
    return "linux", arch


# ---------------------------------------------------------------- Go-compatible JSON
# Manifests were written and read by Go's encoding/json; these helpers give the
# same answers: keys match case-insensitively, the last duplicate wins, null is
# "absent", and a value of the wrong JSON type is an error naming the field.


class JsonObject(dict):
    """A decoded JSON object that remembers every (key, value) pair in order."""

    pairs: list[tuple[str, Any]]

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> JsonObject:
        obj = cls(pairs)
        obj.pairs = pairs
        return obj


def loads(data: bytes | str | dict, what: str) -> Any:
    """Parse JSON text (or accept an already-decoded dict); ManifestError on bad JSON."""
    from acbuild.errors import ManifestError

    if isinstance(data, dict):
        return data
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        return json.loads(text, object_pairs_hook=JsonObject.from_pairs)
    except UnicodeDecodeError as e:
        raise ManifestError(f"{what} is not UTF-8: {e}") from e
    except json.JSONDecodeError as e:
        raise ManifestError(f"{what} is not valid JSON: {e}") from e
    except RecursionError as e:
        raise ManifestError(f"{what} is nested too deeply") from e


def field_of(obj: dict, key: str) -> Any:
    """obj[key] the way Go finds a struct field: case-insensitive, last one wins."""
    want = key.lower()
    pairs = getattr(obj, "pairs", None) or list(obj.items())
    found = None
    for k, v in pairs:
        if k.lower() == want:
            found = v
    return found


def _type_error(value: Any, where: str, want: str) -> Exception:
    from acbuild.errors import ManifestError

    kind = {bool: "a boolean", str: "a string", list: "a list", dict: "an object"}.get(type(value), "a number")
    return ManifestError(f"{where} must be {want}, not {kind} ({json.dumps(value)[:40]})")


def str_(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _type_error(value, where, "a string")
    return value


def bool_(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _type_error(value, where, "true or false")
    return value


def int_(value: Any, where: str, unsigned: bool = False) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or (unsigned and value < 0):
        raise _type_error(value, where, "a non-negative integer" if unsigned else "an integer")
    return value


def list_(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _type_error(value, where, "a list")
    return value


def strmap(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _type_error(value, where, "an object of strings")
    return {k: str_(v, f"{where}.{k}") for k, v in value.items()}


def canonical_json(obj: Any, pretty: bool = False) -> bytes:
    """Go's json.Marshal bytes (or MarshalIndent with 4 spaces): UTF-8, compact,
    and `<`, `>`, `&`, U+2028, U+2029 escaped as Go does."""
    if pretty:
        text = json.dumps(obj, ensure_ascii=False, indent=4)
    else:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text.encode("utf-8")
