"""Build hook: the wheel carries the demo deployment.

robot.toml, robots/, tasks/ and selectors/ stay at the top of the repository, where a
reader of the source looks for a deployment. A built package has no such top, so this
copies them into ``stampless/demo_project/`` of the wheel, where ``stampless demo`` finds
them (``stampless.demo.demo_project``). An editable install reads them in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# What the demo deployment is made of, and which files of each folder belong to it.
DEMO_PARTS = {"robot.toml": None, "robots": "*.py", "tasks": "*.py", "selectors": "*.toml"}


class BuildWithDemoProject(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "stampless" / "demo_project"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for part, pattern in DEMO_PARTS.items():
            source = HERE / part
            if pattern is None:
                shutil.copy2(source, target / part)
                continue
            (target / part).mkdir()
            for file in sorted(source.glob(pattern)):
                shutil.copy2(file, target / part / file.name)


setup(cmdclass={"build_py": BuildWithDemoProject})
