"""What the argparse scripts share (beside them: the library itself never parses arguments): help that shows the
examples as written and the options' defaults."""

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description (the script's docstring, with its examples) as written, and each option's default where it
    has one to show (not for required options, switches, or options that are off unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default in (None, False, argparse.SUPPRESS) or action.default == []:
            return action.help
        return super()._get_help_string(action)
