"""The argument parser every `fedstream` subcommand uses: one-line errors and help that shows each default."""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import NoReturn


class OneLineErrorParser(argparse.ArgumentParser):
    """Errors print one line naming the flag and what it allows, then where the full usage is, and exit 2."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        hint = self._closest_flag(text)
        sys.stderr.write(f"{self.prog}: error: {text}{hint} (see {self.prog} --help)\n")
        raise SystemExit(2)

    def _closest_flag(self, message: str) -> str:
        """For a mistyped flag, the flag it most likely meant ("--round" → "did you mean --rounds?")."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        flags = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
        for word in message.removeprefix("unrecognized arguments:").split():
            if word.startswith("--"):
                match = difflib.get_close_matches(word.split("=", 1)[0], flags, n=1)
                if match:
                    return f"; did you mean {match[0]}?"
        return ""


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to a flag's help where X says something (not for None, False or an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or not action.option_strings or default is argparse.SUPPRESS
                or default is None or default is False or default == [] or default == ""):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
