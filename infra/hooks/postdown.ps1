# azd postdown hook (Windows): the same as postdown.sh. The deleted Key Vault keeps its name for
# 90 days (purge protection), so the next `azd up` in this environment uses another.
$ErrorActionPreference = 'Stop'
$buffer = [byte[]]::new(3)
[System.Security.Cryptography.RandomNumberGenerator]::Fill($buffer)
azd env set RESPONDER_VAULT_SUFFIX (-join ($buffer | ForEach-Object { $_.ToString('x2') })) | Out-Null
Write-Host 'postdown: the next deployment gets a new Key Vault name (the deleted one is kept 90 days)'
