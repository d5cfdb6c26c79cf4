using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Suanli.Core.Domain;
using Suanli.Core.Scheduling;
using Suanli.Simulation.Engine;
using Suanli.Simulation.Traces;

namespace Suanli.Simulation.Tests;

public class SimulatorTests
{
    internal static List<TraceJob> RandomWorkload(int seed, int count, int nodes, bool runWithinRequest)
    {
        var rng = new System.Random(seed);
        var jobs = new List<TraceJob>();
        long t = 0;
        for (var i = 0; i < count; i++)
        {
            t += rng.Next(0, 50);
            var req = rng.Next(10, 1000);
            var run = runWithinRequest ? rng.Next(1, req + 1) : rng.Next(1, 2000);
            jobs.Add(new TraceJob(new JobSpec(i, "t" + rng.Next(4), new TaskResources(1000, 0), rng.Next(1, nodes + 1), t, req), run));
        }

        return jobs;
    }

    [Property(MaxTest = 60)]
    public Property Easy_HeadJob_NeverStartsAfterItsFirstReservation(int seed)
    {
        var pool = Pool.Uniform(8, new NodeShape(1000, 0));
        var sim = new Simulator(pool, PolicyRegistry.Build("fcfs", pool, backfill: BackfillMode.Easy));
        var result = sim.Run(RandomWorkload(seed, 80, 8, runWithinRequest: true));
        var late = result.Jobs.Where(j => result.FirstReservation.TryGetValue(j.Id, out var at) && j.Start > at).ToList();
        return (late.Count == 0).Label($"jobs started after their reservation: {string.Join(", ", late.Select(j => j.Id))}");
    }

    [Property(MaxTest = 30)]
    public bool Replay_SameSeed_IdenticalOutcome(int seed)
    {
        string Run()
        {
            var pool = Pool.Uniform(8, new NodeShape(1000, 0));
            var r = new Simulator(pool, PolicyRegistry.Build("fair-share", pool, backfill: BackfillMode.Conservative)).Run(RandomWorkload(seed, 60, 8, false));
            return string.Join(";", r.Jobs.Select(j => $"{j.Id}:{j.Start}:{j.End}"));
        }

        return Run() == Run();
    }

    [Fact]
    public void Replay_AllJobsRun_AndNoneStartsBeforeSubmit()
    {
        var pool = Pool.Uniform(8, new NodeShape(1000, 0));
        var jobs = RandomWorkload(7, 200, 8, false);
        var r = new Simulator(pool, PolicyRegistry.Build("sjf", pool)).Run(jobs);
        Assert.Equal(200, r.Jobs.Count);
        Assert.All(r.Jobs, j => Assert.True(j.Start >= j.Submit));
    }

    [Fact]
    public void Swf_MalformedLines_CountedWithLineNumbers()
    {
        var path = Path.Combine(Path.GetTempPath(), $"suanli-bad-{Environment.ProcessId}.swf");
        File.WriteAllText(path, "; MaxNodes: 4\n; MaxProcs: 4\n1 0 0 10 1 -1 -1 1 20 -1 1 1 1 1 1 1 -1 -1\nthis is not swf\n2 5 0 10 2\n3 6 0 -1 1 -1 -1 1 20 -1 5 1 1 1 1 1 -1 -1\n");
        try
        {
            var trace = SwfReader.Read(path);
            Assert.Single(trace.Jobs);
            Assert.Equal(2, trace.Malformed);
            Assert.Equal(1, trace.Skipped);
            Assert.Contains(trace.Examples, e => e.Line == 4);
            Assert.Contains(trace.Examples, e => e.Line == 5 && e.Reason.Contains("found 5", StringComparison.Ordinal));
            Assert.Equal(4, trace.DefaultPool!.TotalNodes);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData("providers: []", "providers: must list")]
    [InlineData("providers:\n  - id: a\n    region: r\n    nodeGroups:\n      - id: g\n        nodes: 0\n        cpu: 4", "providers[0].nodeGroups[0].nodes")]
    [InlineData("providers:\n  - id: a\n    region: r\n    nodeGroups:\n      - id: g\n        nodes: 2\n        cpu: 4\n        accelerator: B9000\n        acceleratorCount: 8", "providers[0].nodeGroups[0].accelerator: unknown model 'B9000'")]
    [InlineData("providers:\n  - id: a\n    region: r\n    nodeGroups:\n      - id: g\n        nodes: 2\n        cpu: -1", "providers[0].nodeGroups[0].cpu")]
    [InlineData("providers:\n  - id: 'a b'\n    region: r", "providers[0].id")]
    [InlineData("providers: [ {", "not valid YAML/JSON")]
    [InlineData("providers:\n  - id: a\n    region: r\n    colour: red", "not valid YAML/JSON")]
    public void ClusterFile_Invalid_NamesFieldAndRule(string text, string expected)
    {
        var e = Assert.Throws<ClusterFileException>(() => ClusterFile.Parse(text));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ClusterFile_JsonMultiProvider_LoadsWithPricesAndLatency()
    {
        var pool = ClusterFile.Parse("""
            {"providers": [
              {"id": "zz", "region": "henan", "nodeGroups": [{"id": "cpu", "nodes": 4, "cpu": 64, "memoryMiB": 262144, "pricePerNodeHour": 8.5}]},
              {"id": "gy", "region": "guizhou", "nodeGroups": [{"id": "npu", "nodes": 2, "cpu": 192, "accelerator": "Ascend910B", "acceleratorCount": 8}]}],
             "latency": [{"from": "henan", "to": "guizhou", "ms": 28}]}
            """);
        Assert.Equal(2, pool.Groups.Count);
        Assert.Equal(8.5m, pool.Groups[0].PricePerNodeHour);
        Assert.Equal(28, pool.LatencyMs("guizhou", "henan"));
        Assert.Equal("Ascend910B", pool.Groups[1].Shape.AcceleratorModel);
    }
}
