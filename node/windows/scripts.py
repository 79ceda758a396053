"""The PowerShell scripts of the Windows node and the names of their inputs.

Each script is a constant; every input travels in a ``CSI_*`` environment
variable of the PowerShell process (see :mod:`node.powershell`), never in
the script text.
"""

from __future__ import annotations

from node.powershell import wrap_script

# Inputs of the scripts (environment variables of the PowerShell process).
ENV_REMOTE_PATH = "CSI_REMOTE_PATH"
ENV_USER = "CSI_SMB_USER"
ENV_PASSWORD = "CSI_SMB_PASSWORD"  # noqa: S105 - the variable's name, not a password
ENV_REQUIRE_PRIVACY = "CSI_REQUIRE_PRIVACY"

OP_GET_MAPPING = "get-mapping"
OP_NEW_MAPPING = "new-mapping"
OP_REMOVE_MAPPING = "remove-mapping"

_GET_MAPPING = """
$found = Get-SmbGlobalMapping -RemotePath $Env:CSI_REMOTE_PATH -ErrorAction SilentlyContinue
$mapping = $found | Select-Object -First 1
if ($null -eq $mapping) {
    $result = @{ exists = $false; status = ''; privacy = $null }
} else {
    $status = [string]$mapping.Status
    $result = @{ exists = $true; status = $status; privacy = $mapping.RequirePrivacy }
}
"""

# The password exists only as $Env:CSI_SMB_PASSWORD (removed from the process
# environment once read) and inside the SecureString / PSCredential.
_NEW_MAPPING = """
$secure = ConvertTo-SecureString -String $Env:CSI_SMB_PASSWORD -AsPlainText -Force
Remove-Item -LiteralPath Env:CSI_SMB_PASSWORD
$user = $Env:CSI_SMB_USER
$credentialType = 'System.Management.Automation.PSCredential'
$credential = New-Object -TypeName $credentialType -ArgumentList $user, $secure
$privacy = $Env:CSI_REQUIRE_PRIVACY -eq 'true'
$remote = $Env:CSI_REMOTE_PATH
$null = New-SmbGlobalMapping -RemotePath $remote -Credential $credential -RequirePrivacy $privacy
$result = @{ created = $true }
"""

_REMOVE_MAPPING = """
$found = Get-SmbGlobalMapping -RemotePath $Env:CSI_REMOTE_PATH -ErrorAction SilentlyContinue
$mapping = $found | Select-Object -First 1
$removed = $false
if ($null -ne $mapping) {
    $null = Remove-SmbGlobalMapping -RemotePath $Env:CSI_REMOTE_PATH -Force
    $removed = $true
}
$result = @{ removed = $removed }
"""

# Every PowerShell script this platform runs, by operation name (CSI_OP).
SCRIPTS: dict[str, str] = {
    OP_GET_MAPPING: wrap_script(_GET_MAPPING),
    OP_NEW_MAPPING: wrap_script(_NEW_MAPPING),
    OP_REMOVE_MAPPING: wrap_script(_REMOVE_MAPPING),
}
