"""The publisher's one step: point the notebook's REPOSITORY default and the README's Colab line (a badge, where it
said how to open the notebook from GitHub) at this clone's GitHub remote `origin` (https or ssh form), so that a copy of the notebook that Colab cannot trace back to
GitHub (a Drive copy, an upload) still finds its repository. A notebook opened from GitHub needs neither.
Usage: python publish.py [--remote origin] [--branch main]
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
GITHUB = re.compile(r"^(?:https://github\.com/|git@github\.com:|ssh://git@github\.com/)([\w.-]+/[\w.-]+?)(?:\.git)?/?$")
COLAB_LINE = re.compile(r"^<!-- colab -->.*$", re.M)  # the README's Colab line: how to open it, then the badge
SETTING = re.compile(r'(REPOSITORY = \\")[^\\"]*(\\")')  # the setup cell's line, as it stands in the .ipynb's JSON


def github_repository(url):
    """"owner/name" of a GitHub remote URL (https://github.com/owner/name.git, git@github.com:owner/name.git, ...)."""
    found = GITHUB.match(url.strip())
    if not found:
        raise ValueError(f"remote {url.strip()!r} is not a GitHub repository (https://github.com/owner/name or "
                         f"git@github.com:owner/name)")
    return found.group(1)


def colab_badge(repository, branch="main"):
    """The README's Colab line once the repository is known: a badge that opens the notebook of `branch` in Colab."""
    return (f"<!-- colab -->[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{repository}/blob/{branch}/experiments.ipynb)")


def publish(root, repository, branch):
    """Write `repository` into the notebook's REPOSITORY default and the README's badge, which opens `branch`."""
    notebook, readme = root / "experiments.ipynb", root / "README.md"
    text, settings = SETTING.subn(rf"\g<1>{repository}\g<2>", notebook.read_text())
    if settings != 1:
        raise ValueError(f"{notebook} has {settings} REPOSITORY settings, not one")
    notebook.write_text(text)
    text, badges = COLAB_LINE.subn(colab_badge(repository, branch), readme.read_text())
    if badges != 1:
        raise ValueError(f"{readme} has {badges} Colab lines (starting '<!-- colab -->'), not one")
    readme.write_text(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--remote", default="origin")
    parser.add_argument("--branch", default="main", help="the branch the badge opens")
    args = parser.parse_args(argv)
    url = subprocess.run(["git", "remote", "get-url", args.remote], cwd=ROOT, capture_output=True, text=True)
    if url.returncode:
        print(f"no git remote {args.remote!r} here: {url.stderr.strip()}", file=sys.stderr)
        return 1
    try:
        repository = github_repository(url.stdout)
        publish(ROOT, repository, args.branch)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"REPOSITORY and the Colab badge now point at {repository} (branch {args.branch}); commit and push both")
    return 0


if __name__ == "__main__":
    sys.exit(main())
