using System.Diagnostics;
using System.Text.Json;

namespace Suanli.Simulation.Tests;

public class CliTests
{
    private static (int Code, string Out, string Err) Suanli(params string[] args)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "suanli.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(dll);
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["SUANLI_LANG"] = "en";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(3)), "suanli did not exit within 3 minutes");
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    [Fact]
    public void Simulate_RlSchedulerJson_HasContractFieldsAndWindows()
    {
        var (code, stdout, stderr) = Suanli("simulate", "--trace", Paths.Lublin, "--protocol", "rlscheduler", "--policy", "sjf", "--backfill", "protocol", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        foreach (var field in new[] { "jobs", "skipped", "avgBoundedSlowdown", "avgWaitSeconds", "avgJctSeconds", "utilization", "makespanSeconds", "wallSeconds", "windows" })
        {
            Assert.True(root.TryGetProperty(field, out _), $"missing {field}");
        }

        Assert.Equal(73.31, Math.Round(root.GetProperty("avgBoundedSlowdown").GetDouble(), 2));
        Assert.Equal(10, root.GetProperty("windows").GetArrayLength());
    }

    [Fact]
    public void Simulate_ReplayWithJobsOut_WritesCsvAndJson()
    {
        var csv = Path.Combine(Path.GetTempPath(), $"suanli-jobs-{Environment.ProcessId}.csv");
        try
        {
            var (code, stdout, stderr) = Suanli("simulate", "--trace", Paths.Lublin, "--policy", "fcfs", "--backfill", "easy", "--json", "--jobs-out", csv);
            Assert.True(code == 0, stderr);
            using var doc = JsonDocument.Parse(stdout);
            Assert.Equal(10000, doc.RootElement.GetProperty("jobs").GetInt32() + doc.RootElement.GetProperty("skipped").GetInt32());
            Assert.InRange(doc.RootElement.GetProperty("utilization").GetDouble(), 0.01, 1.0);
            Assert.Equal(doc.RootElement.GetProperty("jobs").GetInt32() + 1, File.ReadAllLines(csv).Length);
        }
        finally
        {
            File.Delete(csv);
        }
    }

    [Fact]
    public void Simulate_FgdOneSeed_ReportsAllocationRatios()
    {
        var (code, stdout, stderr) = Suanli("simulate", "--trace", Paths.PaiDefault, "--protocol", "fgd", "--policy", "bestfit", "--seed", "42", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        Assert.InRange(doc.RootElement.GetProperty("allocationRatioAt130").GetDouble(), 90, 96);
        Assert.InRange(doc.RootElement.GetProperty("allocationRatioAt100").GetDouble(), 90, 96);
    }

    [Theory]
    [InlineData(3, "does not exist", "simulate", "--trace", "/nonexistent/trace.swf")]
    [InlineData(2, "unknown policy", "simulate", "--trace", "LUBLIN", "--policy", "magic")]
    [InlineData(2, "--backfill", "simulate", "--trace", "LUBLIN", "--backfill", "sometimes")]
    [InlineData(2, "--protocol fgd", "simulate", "--trace", "LUBLIN", "--protocol", "fgd")]
    public void Simulate_BadInput_ExitsNonZeroWithReason(int expectedCode, string expectedText, params string[] args)
    {
        var (code, _, stderr) = Suanli([.. args.Select(a => a == "LUBLIN" ? Paths.Lublin : a)]);
        Assert.Equal(expectedCode, code);
        Assert.Contains(expectedText, stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Simulate_InvalidClusterFile_NamesField()
    {
        var file = Path.Combine(Path.GetTempPath(), $"suanli-cluster-{Environment.ProcessId}.yaml");
        File.WriteAllText(file, "providers:\n  - id: a\n    region: r\n    nodeGroups:\n      - id: g\n        nodes: -3\n        cpu: 4\n");
        try
        {
            var (code, _, stderr) = Suanli("simulate", "--trace", Paths.Lublin, "--cluster", file);
            Assert.Equal(2, code);
            Assert.Contains("providers[0].nodeGroups[0].nodes", stderr, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public void BenchScheduler_SmallPool_PrintsContractFields()
    {
        var (code, stdout, stderr) = Suanli("bench", "scheduler", "--nodes", "200", "--providers", "10", "--pending", "2000", "--cycles", "3", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        Assert.True(doc.RootElement.GetProperty("decisionsPerSecond").GetDouble() > 0);
        Assert.True(doc.RootElement.TryGetProperty("cycleMsP50", out _));
        Assert.True(doc.RootElement.TryGetProperty("cycleMsP99", out _));
    }
}
