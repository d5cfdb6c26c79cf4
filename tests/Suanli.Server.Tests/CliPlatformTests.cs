using System.Diagnostics;
using System.Text.Json.Nodes;

namespace Suanli.Server.Tests;

public class CliPlatformTests
{
    private static (int Code, string Out, string Err) Suanli(IDictionary<string, string> env, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(ServerProcess.SuanliDll);
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["SUANLI_LANG"] = "en";
        foreach (var (k, v) in env)
        {
            psi.Environment[k] = v;
        }

        using var p = Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(2)), "suanli did not exit");
        return (p.ExitCode, o.Result, e.Result);
    }

    [Fact]
    public async Task SubmitWait_Jobs_Logs_Explain_Usage_Tenants_Keys_FromTheCli()
    {
        using var s = new ServerProcess();
        var env = new Dictionary<string, string> { ["SUANLI_SERVER"] = s.Url, ["SUANLI_KEY"] = s.AdminKey };
        var (code, _, err) = Suanli(env, "tenants", "create", "lab", "--sector", "education");
        Assert.True(code == 0, err);
        var file = Path.Combine(s.DataDir, "job.yaml");
        await File.WriteAllTextAsync(file, "name: cli-hello\ntenant: lab\ncommand: [\"/bin/sh\", \"-c\", \"echo from-cli\"]\nresources: {cpu: 1, memoryMiB: 64}\ntimeLimitSeconds: 60\n");
        (code, var stdout, err) = Suanli(env, "submit", file, "--wait", "--json");
        Assert.True(code == 0, err + stdout);
        var job = JsonNode.Parse(stdout)!;
        Assert.Equal("succeeded", job.State());
        var id = job["id"]!.GetValue<long>().ToString(System.Globalization.CultureInfo.InvariantCulture);

        (code, stdout, _) = Suanli(env, "logs", id);
        Assert.Equal(0, code);
        Assert.Equal("from-cli\n", stdout);
        (code, stdout, _) = Suanli(env, "jobs");
        Assert.Equal(0, code);
        Assert.Contains("cli-hello", stdout, StringComparison.Ordinal);
        Assert.Contains("succeeded", stdout, StringComparison.Ordinal);
        (code, stdout, _) = Suanli(env, "explain", id);
        Assert.Equal(0, code);
        Assert.Contains("succeeded", stdout, StringComparison.Ordinal);
        (code, stdout, _) = Suanli(env, "providers", "--json");
        Assert.Equal(0, code);
        Assert.Equal("local", JsonNode.Parse(stdout)!["items"]![0]!["name"]!.GetValue<string>());
        (code, stdout, _) = Suanli(env, "keys", "create", "--tenant", "1");
        Assert.Equal(0, code);
        Assert.StartsWith("sk-", stdout.Trim(), StringComparison.Ordinal);
        (code, stdout, _) = Suanli(env, "usage", "--group-by", "sector", "--json");
        Assert.Equal(0, code);
        Assert.Equal("education", JsonNode.Parse(stdout)!["items"]![0]!["key"]!.GetValue<string>());

        // A failing job: --wait exits 4.
        await File.WriteAllTextAsync(file, "name: cli-fail\ntenant: lab\ncommand: [\"false\"]\nresources: {cpu: 1, memoryMiB: 64}\ntimeLimitSeconds: 60\n");
        (code, _, _) = Suanli(env, "submit", file, "--wait");
        Assert.Equal(4, code);

        // Bad input: exit 2 and the field is named; Chinese when asked.
        await File.WriteAllTextAsync(file, "name: bad\ntenant: lab\ncommand: [\"true\"]\nresources: {cpu: -1, memoryMiB: 64}\ntimeLimitSeconds: 60\n");
        (code, _, err) = Suanli(env, "submit", file);
        Assert.Equal(2, code);
        Assert.Contains("resources.cpu", err, StringComparison.Ordinal);
        var zh = new Dictionary<string, string>(env) { ["SUANLI_LANG"] = "zh_CN.UTF-8" };
        (code, _, err) = Suanli(zh, "submit", Path.Combine(s.DataDir, "missing.yaml"));
        Assert.Equal(3, code);
        Assert.Contains("作业文件", err, StringComparison.Ordinal);
        (code, _, err) = Suanli(new Dictionary<string, string> { ["SUANLI_SERVER"] = "http://127.0.0.1:1", ["SUANLI_KEY"] = "sk-x" }, "jobs");
        Assert.Equal(5, code);
    }

    [Fact]
    public async Task Market_Wallet_Vouchers_Ledger_Statements_FromTheCli()
    {
        using var s = new ServerProcess();
        var env = new Dictionary<string, string> { ["SUANLI_SERVER"] = s.Url, ["SUANLI_KEY"] = s.AdminKey };
        Assert.Equal(0, Suanli(env, "tenants", "create", "lab", "--sector", "education").Code);
        var providers = JsonNode.Parse(Suanli(env, "providers", "--json").Out)!["items"]!.AsArray();
        var local = providers.Single(p => p!["name"]!.GetValue<string>() == "local")!["id"]!.ToString();
        var sw = Stopwatch.StartNew();
        while (JsonNode.Parse(Suanli(env, "providers", "--json").Out)!["items"]![0]!["groups"]!.AsArray().Count == 0 && sw.Elapsed < TimeSpan.FromSeconds(30))
        {
            await Task.Delay(200);
        }

        var (code, stdout, err) = Suanli(env, "market", "offers", "create", "--provider", local, "--group", "local", "--unit", "core-hour", "--price", "3600", "--nodes", "1");
        Assert.True(code == 0, err);
        Assert.Contains("offer 1 published", stdout, StringComparison.Ordinal);
        (code, _, err) = Suanli(env, "market", "offers", "create", "--provider", local, "--group", "local", "--unit", "furlong", "--price", "1", "--nodes", "1");
        Assert.Equal(2, code);
        Assert.Contains("unit", err, StringComparison.Ordinal);
        (code, stdout, err) = Suanli(env, "wallet", "topup", "1", "100", "--reference", "receipt-7", "--idempotency-key", "r7");
        Assert.True(code == 0, err);
        Assert.Contains("balance 100.00", stdout, StringComparison.Ordinal);
        var until = DateTimeOffset.UtcNow.AddDays(10).ToString("O");
        (code, _, err) = Suanli(env, "vouchers", "programmes", "create", "edu-2026", "--funder", "city", "--budget", "50", "--share", "0.5", "--tenant-cap", "20", "--sectors", "education", "--to", until);
        Assert.True(code == 0, err);
        (code, stdout, err) = Suanli(env, "vouchers", "issue", "1", "1", "10");
        Assert.True(code == 0, err);
        Assert.Contains("voucher 1 issued", stdout, StringComparison.Ordinal);

        var file = Path.Combine(s.DataDir, "paid.yaml");
        await File.WriteAllTextAsync(file, "name: paid\ntenant: lab\ncommand: [\"sleep\", \"1\"]\nresources: {cpu: 0.5, memoryMiB: 64}\ntimeLimitSeconds: 60\n");
        (code, stdout, err) = Suanli(env, "market", "quote", file);
        Assert.True(code == 0, err);
        Assert.Contains("3600.00/core-hour", stdout, StringComparison.Ordinal);
        (code, _, err) = Suanli(env, "submit", file, "--wait");
        Assert.True(code == 0, err);

        (code, stdout, _) = Suanli(env, "ledger", "verify");
        Assert.Equal(0, code);
        Assert.Contains("ledger OK", stdout, StringComparison.Ordinal);
        var zh = new Dictionary<string, string>(env) { ["SUANLI_LANG"] = "zh_CN.UTF-8" };
        Assert.Contains("账本核验通过", Suanli(zh, "ledger", "verify").Out, StringComparison.Ordinal);
        var wallet = JsonNode.Parse(Suanli(env, "wallet", "1", "--json").Out)!;
        Assert.True(wallet["balanceFen"]!.GetValue<long>() < 10_000);
        Assert.True(wallet["vouchers"]![0]!["availableFen"]!.GetValue<long>() < 1_000);
        (code, stdout, _) = Suanli(env, "statements", "tenant", "1", "--csv");
        Assert.Equal(0, code);
        Assert.StartsWith("Settled,JobId,Attempt,Provider", stdout, StringComparison.Ordinal);
        Assert.Equal(2, stdout.Trim().Split('\n').Length);
        (code, stdout, _) = Suanli(env, "statements", "provider", local);
        Assert.Equal(0, code);
        Assert.Contains("1 lines", stdout, StringComparison.Ordinal);
        (code, stdout, _) = Suanli(env, "vouchers", "writeoff", "1");
        Assert.Equal(0, code);
        Assert.Contains("vpay:", stdout, StringComparison.Ordinal);
        (code, stdout, _) = Suanli(env, "market", "summary");
        Assert.Equal(0, code);
        Assert.Contains("on-demand", stdout, StringComparison.Ordinal);
        (code, stdout, _) = Suanli(env, "ledger", "accounts");
        Assert.Equal(0, code);
        Assert.Contains("platform:escrow", stdout, StringComparison.Ordinal);
        (code, stdout, _) = Suanli(env, "wallet", "transfers", "1");
        Assert.Equal(0, code);
        Assert.Contains("topup:1:r7", stdout, StringComparison.Ordinal);
        (code, _, _) = Suanli(env, "market", "offers", "withdraw", "1");
        Assert.Equal(0, code);
        Assert.Contains("no", Suanli(env, "market", "offers").Out, StringComparison.Ordinal);
    }
}
