using Suanli.Core.Scheduling;
using Suanli.Simulation.Protocols;

namespace Suanli.Simulation.Tests;

public class CalibrationTests
{
    private static readonly Lazy<RlSchedulerProtocol.ProtocolLog> Sdsc = new(() => RlSchedulerProtocol.Load(Paths.Sdsc));
    private static readonly Lazy<RlSchedulerProtocol.ProtocolLog> Lublin = new(() => RlSchedulerProtocol.Load(Paths.Lublin));

    [Theory]
    [InlineData("SDSC-SP2", "fcfs", false, 1727.54)]
    [InlineData("SDSC-SP2", "sjf", false, 2680.55)]
    [InlineData("SDSC-SP2", "f1", false, 1232.06)]
    [InlineData("SDSC-SP2", "fcfs", true, 1595.12)]
    [InlineData("SDSC-SP2", "sjf", true, 2167.84)]
    [InlineData("SDSC-SP2", "f1", true, 1098.22)]
    [InlineData("Lublin-1", "fcfs", false, 7273.77)]
    [InlineData("Lublin-1", "sjf", false, 277.35)]
    [InlineData("Lublin-1", "f1", false, 258.37)]
    [InlineData("Lublin-1", "fcfs", true, 235.82)]
    [InlineData("Lublin-1", "sjf", true, 73.31)]
    [InlineData("Lublin-1", "f1", true, 75.07)]
    public void RlScheduler_PublishedValue_ReproducedToTwoDecimals(string log, string policy, bool backfill, double published)
    {
        var data = log == "SDSC-SP2" ? Sdsc.Value : Lublin.Value;
        var (mean, windows) = RlSchedulerProtocol.Run(data, PolicyRegistry.Order(policy), backfill);
        Assert.Equal(10, windows.Count);
        Assert.Equal(published, Math.Round(mean, 2));
    }

    [Fact]
    public void RlScheduler_Load_KeepsProtocolJobCount()
    {
        Assert.Equal(128, Sdsc.Value.Nodes);
        Assert.Equal(256, Lublin.Value.Nodes);
        Assert.True(Sdsc.Value.Jobs.Count > 9000);
        Assert.All(Sdsc.Value.Jobs, j => Assert.True(j.Run > 0));
    }

    private static readonly Lazy<FgdProtocol.Inputs> Pai = new(() => FgdProtocol.Load(Paths.PaiDefault));
    private static readonly Lazy<long[]> Cooked = new(GoRandom.LoadRngCooked);

    [Fact]
    public void GoRandom_CheckValues_MatchGo()
    {
        Assert.Equal(5577006791947779410, new GoRandom(1, Cooked.Value).Int63());
        var r = new GoRandom(1, Cooked.Value);
        Assert.Equal([81, 87, 47, 59, 81, 18, 25, 40, 56, 0], Enumerable.Range(0, 10).Select(_ => r.Intn(100)));
        var z = new GoRandom(0, Cooked.Value);
        Assert.Equal(8717895732742165505, z.Int63());
        Assert.Equal(2259404117704393152, z.Int63());
    }

    [Theory]
    [InlineData(42, 10866, 2714, 8075080, "0255", 260)]
    [InlineData(45, 10813, 2661, 8082190, "1603", 1116)]
    [InlineData(51, 10859, 2707, 8074900, "7151", 216)]
    public void FgdWorkload_CheckValues_MatchProtocol(int seed, int tasks, int appended, long final, string firstTask, int rank0)
    {
        var w = FgdProtocol.BuildWorkload(Pai.Value, seed, Cooked.Value);
        Assert.Equal(tasks, w.Sequence.Count);
        Assert.Equal(appended, w.Appended);
        Assert.Equal(final, w.FinalRequestMilli);
        Assert.Equal("openb-pod-" + firstTask, w.Sequence[0].Name);
        Assert.Equal(rank0, Array.IndexOf(w.Ranks, 0));
    }

    [Fact]
    public void FgdTypicalTasks_Default_35KindsTopShare()
    {
        var typical = FgdProtocol.TypicalTasks(Pai.Value.Tasks);
        Assert.Equal(35, typical.Count);
        Assert.Equal((3152L, 810, 1), (typical[0].MilliCpu, typical[0].GpuMilli, typical[0].GpuCount));
        Assert.Equal(0.1348, Math.Round(typical[0].Frequency, 4));
    }

    [Theory]
    [InlineData("fgd", 2532, 5919410)]
    [InlineData("bestfit", 2676, 5785450)]
    public void FgdProtocol_Seed42EndState_MatchesArtifactLog(string policy, int failed, long allocated)
    {
        var r = FgdProtocol.RunSeed(Pai.Value, policy, 42, Cooked.Value);
        Assert.Equal(failed, r.Failed);
        Assert.Equal(allocated, r.AllocatedGpuMilli);
    }

    [Theory]
    [InlineData("bestfit", 92.86, 93.08, 0.005)]
    [InlineData("random", 86.30, 87.47, 1.0)]
    public void FgdProtocol_PublishedMeans_Reproduced(string policy, double at100, double at130, double tolerance)
    {
        var typical = FgdProtocol.TypicalTasks(Pai.Value.Tasks);
        var runs = FgdProtocol.Seeds.Select(s => FgdProtocol.RunSeed(Pai.Value, policy, s, Cooked.Value, typical)).ToList();
        Assert.InRange(runs.Average(r => r.AllocAt100), at100 - tolerance, at100 + tolerance);
        Assert.InRange(runs.Average(r => r.AllocAt130), at130 - tolerance, at130 + tolerance);
    }

    [Theory]
    [InlineData(0.125, 2, 0.12)]
    [InlineData(0.375, 2, 0.38)]
    [InlineData(2.675, 2, 2.67)] // binary value is below the half
    [InlineData(129.5, 0, 130)]
    [InlineData(128.5, 0, 128)]
    public void PyRound_MatchesPython(double x, int digits, double expected) => Assert.Equal(expected, PyNum.Round(x, digits));

    [Fact]
    public void PairwiseSum_MatchesPlainSumOnIntegers()
    {
        var values = Enumerable.Range(1, 1000).Select(i => (double)i).ToArray();
        Assert.Equal(500500, PyNum.PairwiseSum(values));
    }
}
