"""Static checks of every PowerShell script the Windows node runs.

There is no PowerShell on Linux; tree-sitter-powershell parses the scripts
instead: no syntax errors, only the expected cmdlets and parameters, inputs
read from ``$Env:`` variables but never expanded into strings or invoked,
and the password never reaching anything that is written out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import tree_sitter_powershell
from tree_sitter import Language, Node, Parser

from node.powershell import OP_VARIABLE, POWERSHELL_FLAGS, PowerShell, wrap_script
from node.windows import (
    ENV_PASSWORD,
    ENV_REMOTE_PATH,
    ENV_REQUIRE_PRIVACY,
    ENV_USER,
    OP_GET_MAPPING,
    OP_NEW_MAPPING,
    OP_REMOVE_MAPPING,
    SCRIPTS,
)

PARSER = Parser(Language(tree_sitter_powershell.language()))

# Every cmdlet any script may call.
ALLOWED_CMDLETS = {
    "ConvertTo-Json",
    "ConvertTo-SecureString",
    "Get-SmbGlobalMapping",
    "New-Object",
    "New-SmbGlobalMapping",
    "Remove-Item",
    "Remove-SmbGlobalMapping",
    "Select-Object",
}
# What each operation's script must call, with exactly these parameters.
EXPECTED_CALLS: dict[str, dict[str, set[str]]] = {
    OP_GET_MAPPING: {
        "Get-SmbGlobalMapping": {"-RemotePath", "-ErrorAction"},
    },
    OP_NEW_MAPPING: {
        "ConvertTo-SecureString": {"-String", "-AsPlainText", "-Force"},
        "New-SmbGlobalMapping": {"-RemotePath", "-Credential", "-RequirePrivacy"},
        "Remove-Item": {"-LiteralPath"},
    },
    OP_REMOVE_MAPPING: {
        "Get-SmbGlobalMapping": {"-RemotePath", "-ErrorAction"},
        "Remove-SmbGlobalMapping": {"-RemotePath", "-Force"},
    },
}
# The environment inputs each script reads (and the Python side passes).
EXPECTED_INPUTS = {
    OP_GET_MAPPING: {ENV_REMOTE_PATH},
    OP_NEW_MAPPING: {ENV_REMOTE_PATH, ENV_USER, ENV_PASSWORD, ENV_REQUIRE_PRIVACY},
    OP_REMOVE_MAPPING: {ENV_REMOTE_PATH},
}
EXECUTING = {"invoke-expression", "iex", "invoke-command", "icm", "start-process", "saps"}


def parse(script: str) -> Node:
    tree = PARSER.parse(script.encode("utf-8"))
    return tree.root_node


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def text(node: Node) -> str:
    return (node.text or b"").decode("utf-8")


def commands(root: Node) -> list[tuple[str, set[str], Node]]:
    """(cmdlet, its own parameters, node) for every command in the script."""
    found = []
    for node in walk(root):
        if node.type != "command":
            continue
        name = next((text(c) for c in node.children if c.type == "command_name"), "")
        params: set[str] = set()
        for elements in (c for c in node.children if c.type == "command_elements"):
            params.update(text(c) for c in elements.children if c.type == "command_parameter")
        found.append((name, params, node))
    return found


def env_variables(node: Node) -> set[str]:
    return {
        text(n).split(":", 1)[1]
        for n in walk(node)
        if n.type == "variable" and text(n).lower().startswith("$env:")
    }


def variables(node: Node) -> set[str]:
    return {text(n).lower() for n in walk(node) if n.type == "variable"}


SCRIPT_IDS = sorted(SCRIPTS)


@pytest.mark.parametrize("op", SCRIPT_IDS)
def test_script_parses_without_errors(op: str) -> None:
    root = parse(SCRIPTS[op])
    assert not root.has_error, f"{op}: syntax error in\n{SCRIPTS[op]}"


def test_the_parser_does_find_errors() -> None:
    assert parse(wrap_script("$result = @{ a = (1 + }")).has_error
    assert parse("try { $x = 1").has_error


@pytest.mark.parametrize("op", SCRIPT_IDS)
def test_only_expected_cmdlets_and_parameters(op: str) -> None:
    calls = commands(parse(SCRIPTS[op]))
    names = {name for name, _, _ in calls}
    assert names <= ALLOWED_CMDLETS, names - ALLOWED_CMDLETS
    for cmdlet, params in EXPECTED_CALLS[op].items():
        used = [p for name, p, _ in calls if name == cmdlet]
        assert used, f"{op} does not call {cmdlet}"
        for p in used:
            assert p == params, f"{op}: {cmdlet} {sorted(p)} != {sorted(params)}"
    # SMB cmdlets only where they belong.
    for cmdlet in ("New-SmbGlobalMapping", "Remove-SmbGlobalMapping", "ConvertTo-SecureString"):
        if cmdlet not in EXPECTED_CALLS[op]:
            assert cmdlet not in names, f"{op} must not call {cmdlet}"


@pytest.mark.parametrize("op", SCRIPT_IDS)
def test_answers_are_compressed_json(op: str) -> None:
    root = parse(SCRIPTS[op])
    json_calls = [p for name, p, _ in commands(root) if name == "ConvertTo-Json"]
    assert len(json_calls) == 2  # the answer and the error object
    assert all("-Compress" in p for p in json_calls)
    first = root.children[0].children[0]  # statement_list → first statement
    assert re.fullmatch(r"\$ErrorActionPreference\s*=\s*'Stop'", text(first))
    tries = [n for n in root.children[0].children if n.type == "try_statement"]
    assert len(tries) == 2  # the output-encoding guard and the script body
    body = tries[-1]
    assert any(c.type == "catch_clauses" for c in body.children)


@pytest.mark.parametrize("op", SCRIPT_IDS)
def test_inputs_only_from_the_environment_never_executed(op: str) -> None:
    script = SCRIPTS[op]
    root = parse(script)
    # Inputs are exactly the expected CSI_ variables.
    assert env_variables(root) == EXPECTED_INPUTS[op]
    assert OP_VARIABLE not in env_variables(root)  # CSI_OP only names the script for fakes
    # Nothing is executed from text: no Invoke-Expression & co., no & or dot-sourcing.
    names = {name.lower() for name, _, _ in commands(root)}
    assert not names & EXECUTING
    assert not [n for n in walk(root) if n.type == "command_invokation_operator"]
    # No expandable (double-quoted) strings at all, so no $Env: value is ever
    # interpolated, and Windows command-line quoting cannot alter the script.
    assert '"' not in script
    expandable = [n for n in walk(root) if n.type.startswith("expandable_")]
    assert not expandable


def test_password_reaches_only_the_credential() -> None:
    root = parse(SCRIPTS[OP_NEW_MAPPING])
    password_var = f"$env:{ENV_PASSWORD}".lower()
    # Where the password variable is read: only as ConvertTo-SecureString -String.
    reads = [n for n in walk(root) if n.type == "variable" and text(n).lower() == password_var]
    assert len(reads) == 1
    command = reads[0].parent
    while command is not None and command.type != "command":
        command = command.parent
    assert command is not None
    assert text(command).startswith("ConvertTo-SecureString -String $Env:CSI_SMB_PASSWORD")
    # Taint: every variable assigned from an expression that uses a tainted one.
    tainted = {password_var}
    assignments = [n for n in walk(root) if n.type == "assignment_expression"]
    changed = True
    while changed:
        changed = False
        for node in assignments:
            target = text(node.children[0]).strip().lower()
            if target == "$null":  # discarded, not stored
                continue
            value_vars = set().union(*(variables(c) for c in node.children[1:]))
            if value_vars & tainted and target not in tainted:
                tainted.add(target)
                changed = True
    assert tainted == {password_var, "$secure", "$credential"}
    # Tainted values go into the credential cmdlets only, never into output.
    allowed_sinks = {"ConvertTo-SecureString", "New-Object", "New-SmbGlobalMapping"}
    for name, _, node in commands(root):
        if variables(node) & tainted:
            assert name in allowed_sinks, f"{name} receives a password-bearing value"
    for node in walk(root):
        if node.type in ("hash_literal_expression", "string_literal"):
            assert not variables(node) & tainted, text(node)
    # The password is dropped from the process environment once read.
    removes = [p for name, p, n in commands(root) if name == "Remove-Item"]
    assert removes == [{"-LiteralPath"}]
    assert f"Remove-Item -LiteralPath Env:{ENV_PASSWORD}" in SCRIPTS[OP_NEW_MAPPING]


def test_error_object_carries_the_windows_error_code() -> None:
    root = parse(SCRIPTS[OP_GET_MAPPING])
    catch = next(n for n in walk(root) if n.type == "catch_clause" and "ConvertTo-Json" in text(n))
    body = text(catch)
    for key in ("Code", "HResult", "NativeErrorCode", "FullyQualifiedErrorId", "Type", "Message"):
        assert re.search(rf"\b{key}\s*=", body), key
    assert "Windows System Error" in body
    assert "error_Code" in body


def test_command_line_flags() -> None:
    ps = PowerShell(executable="powershell.exe")
    argv = ps.argv(SCRIPTS[OP_GET_MAPPING])
    assert argv == [
        "powershell.exe",
        "-NoLogo",
        "-NoProfile",
        "-NonInteractive",
        "-Mta",
        "-Command",
        SCRIPTS[OP_GET_MAPPING],
    ]
    assert POWERSHELL_FLAGS == ("-NoLogo", "-NoProfile", "-NonInteractive", "-Mta")
    for script in SCRIPTS.values():
        assert "\x00" not in script
        assert len(" ".join(ps.argv(script))) < 8000  # far below Windows' 32767
