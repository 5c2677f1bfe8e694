"""Print, one per line, the requirements of sbops extras that are not importable in this python.

    python scripts/extras_missing.py test [bench ...]

Used by scripts/install.sh so that an extra's package is installed only where it is missing: a
package that imports is taken as it is (no index is asked about it, so this works offline), and
a requirement whose environment marker does not hold here is left out. The extras are read from
pyproject.toml, the one place they are listed. Python >= 3.9, standard library (and pip's
vendored `packaging` for markers, when present) only.
"""
import ast
import importlib.util
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# distribution name -> top-level module, where they differ
IMPORT_NAME = {"pyyaml": "yaml", "pillow": "PIL", "scikit-learn": "sklearn", "flash-attn": "flash_attn",
               "flash-linear-attention": "fla"}


def optional_dependencies(text):
    """[project.optional-dependencies] of a pyproject.toml: {extra: [requirement, ...]}."""
    try:
        import tomllib  # Python >= 3.11
        return tomllib.loads(text)["project"].get("optional-dependencies", {})
    except ImportError:
        pass
    m = re.search(r"^\[project\.optional-dependencies\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if not m:
        return {}
    extras = {}
    # name = [ "a", "b; marker" ]  (possibly over several lines; TOML strings here are plain)
    for name, body in re.findall(r"^([A-Za-z0-9_.-]+)\s*=\s*(\[.*?\])", m.group(1), re.M | re.S):
        body = re.sub(r"#[^\n\"']*$", "", body, flags=re.M)
        extras[name] = ast.literal_eval(body)
    return extras


def _split(req):
    """'triton>=3; sys_platform == "linux"' -> ('triton', 'sys_platform == "linux"')."""
    spec, _, marker = req.partition(";")
    name = re.match(r"\s*([A-Za-z0-9_.-]+)", spec).group(1)
    return name, marker.strip()


def _marker_holds(marker):
    if not marker:
        return True
    try:
        from pip._vendor.packaging.markers import Marker
    except ImportError:  # no pip: cannot evaluate, keep the requirement
        return True
    return Marker(marker).evaluate()


def missing(extras, names):
    out = []
    for extra in names:
        if extra not in extras:
            raise SystemExit(f"extras_missing.py: unknown extra {extra!r}; expected one of {sorted(extras)}")
        for req in extras[extra]:
            name, marker = _split(req)
            if not _marker_holds(marker):
                continue
            module = IMPORT_NAME.get(name.lower(), name.replace("-", "_"))
            if importlib.util.find_spec(module) is None and req.partition(";")[0].strip() not in out:
                out.append(req.partition(";")[0].strip())
    return out


if __name__ == "__main__":
    deps = optional_dependencies((ROOT / "pyproject.toml").read_text())
    for r in missing(deps, sys.argv[1:]):
        print(r)
