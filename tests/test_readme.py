"""The README's example runs and prints what the README says it prints."""
import contextlib
import io
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_output():
    text = README.read_text()
    code = text.split("## Example", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    claimed = [line[2:].strip() for line in code.splitlines() if line.startswith("# ")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README example", "exec"), {})
    printed = out.getvalue().splitlines()
    assert printed[0] == "torch.Size([55, 55, 16, 16, 9, 9])"
    assert printed[1] == claimed[0]  # the parameter counts in the comment
