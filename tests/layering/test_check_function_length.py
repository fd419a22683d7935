#!/usr/bin/env python3
"""check_function_length.py itself: with its allowance list empty, an 80-line
function of server/ or runtime/ passes and an 81-line one fails naming it;
lambdas count toward the function that holds them, and braces inside strings,
raw strings and comments do not count as code."""
import subprocess
import sys
import tempfile
from pathlib import Path

CHECK = Path(__file__).resolve().parent / "check_function_length.py"


def function(name, lines, body_line="  x += 1;\n"):
    """A function `name` of exactly `lines` lines, head and closing brace included."""
    return f"int {name}(int x) {{\n" + body_line * (lines - 3) + "  return x;\n}\n"


def run(files):
    with tempfile.TemporaryDirectory() as tmp:
        for rel, text in files.items():
            path = Path(tmp) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        done = subprocess.run([sys.executable, str(CHECK), tmp], capture_output=True, text=True)
        return done.returncode, done.stderr


def main():
    noise = '  s = "{{{"; /* { */ r = R"x({ { )x"; c = \'{\';  // }}}\n'
    cases = [
        ("80 lines", {"server/a/a.cpp": function("fits", 80)}, 0, None),
        ("80 lines in runtime/", {"runtime/b/b.cpp": function("fits", 80)}, 0, None),
        ("81 lines", {"server/a/a.cpp": function("too_long", 81)}, 1, "too_long"),
        ("81 lines in runtime/", {"runtime/b/b.hpp": function("too_long", 81)}, 1, "too_long"),
        ("a lambda inside", {"server/a/a.cpp": function("holder", 81, "  [&] { x += 1; }();\n")},
         1, "holder"),
        ("braces in strings and comments", {"server/a/a.cpp": function("quoted", 80, noise)}, 0,
         None),
        ("outside server/ and runtime/", {"client/c.cpp": function("elsewhere", 200)}, 0, None),
    ]
    failures = []
    for label, files, want_rc, named in cases:
        rc, err = run(files)
        if rc != want_rc or (named and named not in err):
            failures.append(f"{label}: rc {rc} (want {want_rc}), stderr:\n{err}")
    for failure in failures:
        print(failure, file=sys.stderr)
    print(f"{len(cases)} trees checked, {len(failures)} wrong")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
