"""HumanEval answers read as EvalPlus reads them (evaluation/sanitize.py): equal to EvalPlus's own rule on
tree-sitter (tests/evalplus_reference.py) on answers in the formats chat models write, and, run in the sandbox,
a correct solution passes whatever surrounds it (example usage, a `__main__` section, prose, a helper defined
after it, a second block) while a wrong one fails."""

from __future__ import annotations

import ast
import json

import pytest

from evaluation.sandbox import run_program, solution_program
from evaluation.sanitize import sanitize
from tests import evalplus_reference as evalplus

from .helpers import REPO

ITEMS = {json.loads(x)["entry_point"]: json.loads(x)
         for x in (REPO / "tests" / "fixtures" / "benchmarks" / "humaneval.jsonl").read_text().splitlines()}

# (name, entry point, response, passes)
ANSWERS = [
    ("a function, then example usage", "add",
     "Here is the function:\n\n```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```\n\n"
     "Example usage:\n\n```python\nprint(add(2, 3))  # 5\nassert add(1, 1) == 3  # a wrong example of its own\n```\n",
     True),
    ("a __main__ section that reads input", "add",
     "```python\ndef add(a, b):\n    return a + b\n\n\nif __name__ == \"__main__\":\n    a = int(input())\n"
     "    b = int(input())\n    print(add(a, b))\n```", True),
    ("a helper defined after it, and a constant", "is_palindrome",
     "```python\nimport re\n\nPATTERN = r'[^a-z0-9]'\n\n\ndef is_palindrome(text: str) -> bool:\n"
     "    clean = normalise(text)\n    return clean == clean[::-1]\n\n\ndef normalise(text):\n"
     "    return re.sub(PATTERN, '', text.lower())\n\n\ndef unrelated():\n    return 42\n\n\n"
     "print(is_palindrome('A man, a plan'))\n```\nThe helper strips punctuation first.", True),
    ("prose without a fence", "count_vowels",
     "Sure! You can count them like this:\ndef count_vowels(s: str) -> int:\n    c = Counter(s.lower())\n"
     "    return sum(c[v] for v in 'aeiou')\nThis uses a Counter from the standard library.", True),
    ("a body continued after the prompt", "add", "    return a + b\n\n\nprint(add(2, 3))\n", True),
    ("a test class of its own after it", "add",
     "```python\ndef add(a, b):\n    return a + b\n\n\nclass TestAdd:\n    def test(self):\n"
     "        assert add(2, 2) == 5\n\n\nTestAdd().test()\n```", True),
    ("two blocks: the answer, then a shell command", "add",
     "```python\ndef add(a, b):\n    return a + b\n```\nRun it with:\n```bash\npython -c 'from m import add'\n```",
     True),
    ("an async-free decorated duplicate after it", "add",
     "```python\ndef add(a, b):\n    return a + b\n\n\n@functools.cache\ndef add(a, b):\n    return a - b\n```", True),
    ("a wrong solution with example usage", "add",
     "```python\ndef add(a, b):\n    return a - b\n```\n\nExample:\n```python\nprint(add(5, 3))\n```", False),
    ("a function that never returns", "is_palindrome",
     "```python\ndef is_palindrome(text):\n    print(text == text[::-1])\n```", False),
    ("no code at all", "add", "I cannot help with that request.", False),
]


def _same(a: str, b: str) -> bool:
    """Equal as programs (tree-sitter keeps a function's trailing comments, Python's parser does not)."""
    return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))


@pytest.mark.parametrize("name,entry,response,passes", ANSWERS, ids=[a[0] for a in ANSWERS])
def test_sanitized_as_evalplus_does_and_judged_by_what_the_solution_does(name, entry, response, passes):
    item = ITEMS[entry]
    for text in (response, item["prompt"] + "\n" + response):
        assert _same(sanitize(text, entry), evalplus.sanitize(text, entry)), text
        assert _same(sanitize(text), evalplus.sanitize(text)), text
    code = {k: item[k] for k in ("prompt", "test", "entry_point")}
    out = run_program(solution_program(response, code))
    assert out.passed == passes, (name, out.detail)


def test_the_rule_matches_evalplus_on_its_corner_cases():
    """First definition wins, decorated and return-less functions and tuple targets are dropped, `__future__`
    imports are not kept, a name reached only through an attribute or a keyword argument still counts."""
    code = ("from __future__ import annotations\nimport os\nx = 1\na, b = 2, 3\nc, d = 4, 5\n"
            "def f():\n    pass\ndef f():\n    return helper.value + g(key=K)\n"
            "@decorator\ndef g():\n    return 1\ndef g(key):\n    return key\n"
            "K: int = 7\nclass helper:\n    value = x\nclass helper:\n    value = 2\n"
            "def value():\n    return 0\nprint(f())\n")
    for entry in (None, "f", "g", "missing"):
        assert _same(sanitize(code, entry), evalplus.sanitize(code, entry)), entry
    kept = sanitize(code, "f")
    assert "def g(key)" in kept and "K: int = 7" in kept and "class helper" in kept and "def value" in kept
    assert "pass" not in kept and "@decorator" not in kept and "a, b" not in kept and "print" not in kept


def test_code_extract_finds_evalplus_run_with_fewer_parses():
    """The pruned search returns exactly the run EvalPlus's all-pairs search returns (3,000 seeded texts mixing
    code, prose, fences, blank lines and broken indentation)."""
    import random

    from evaluation.sanitize import code_extract

    pieces = ["def f(x):", "    return x", "", "   ", "print(f(1))", "Here is text.", "```python", "```", "x = 1",
              "if x:", "    pass", "class A:", "    y = 2", "for i in range(3):", "  bad indent", "return 5", "else:",
              "# comment", "Example usage:", "    return x \\", " "]  # a continuation before a blank line
    assert code_extract("def f(x):\n    return x \\\n \nThat is all.") == \
        evalplus.code_extract("def f(x):\n    return x \\\n \nThat is all.")
    rng = random.Random(7)
    for _ in range(3000):
        text = "\n".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
        assert code_extract(text) == evalplus.code_extract(text), text
