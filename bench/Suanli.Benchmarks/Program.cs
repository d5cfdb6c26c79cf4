using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using Suanli.Core.Domain;
using Suanli.Core.Scheduling;
using Suanli.Simulation.Bench;
using Suanli.Simulation.Engine;
using Suanli.Simulation.Traces;

BenchmarkSwitcher.FromAssembly(typeof(SchedulingCycleBenchmarks).Assembly).Run(args);

/// <summary>One scheduling cycle over the synthetic pool (10,000 nodes, 100 providers) and queue (100,000 jobs).</summary>
[MemoryDiagnoser]
public class SchedulingCycleBenchmarks
{
    private Pool _pool = null!;
    private List<JobSpec> _jobs = null!;

    [Params(BackfillMode.None, BackfillMode.Easy)]
    public BackfillMode Backfill { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _pool = SchedulerBench.BuildPool(10_000, 100);
        _jobs = SchedulerBench.BuildJobs(100_000);
    }

    [Benchmark]
    public int FirstCycleOnEmptyPool()
    {
        var s = new Scheduler(_pool, PolicyRegistry.Build("fcfs", _pool, backfill: Backfill));
        return s.RunCycle(new CycleInput(3600, _jobs, []), new ClusterState(_pool)).Started.Count;
    }
}

/// <summary>Full SDSC-SP2 replay with EASY backfilling (the log is read once, outside the measurement).</summary>
public class ReplayBenchmarks
{
    private Trace _trace = null!;

    [GlobalSetup]
    public void Setup()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !Directory.Exists(Path.Combine(dir.FullName, "shared", "traces")))
        {
            dir = dir.Parent;
        }

        _trace = SwfReader.Read(Path.Combine(dir?.FullName ?? "..", "shared", "traces", "sdsc-sp2-1998", "SDSC-SP2-1998-4.2-cln.swf.gz"));
    }

    [Benchmark]
    public int SdscSp2Easy()
    {
        var pool = _trace.DefaultPool!;
        return new Simulator(pool, PolicyRegistry.Build("fcfs", pool, backfill: BackfillMode.Easy)).Run(_trace.Jobs).Jobs.Count;
    }
}

/// <summary>One clearing of the spot call market (McAfee trade reduction) over 100,000 orders, half bids, half asks.</summary>
public class CallMarketBenchmarks
{
    private List<Suanli.Core.Market.Order> _bids = null!;
    private List<Suanli.Core.Market.Order> _asks = null!;

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(42);
        _bids = [.. Enumerable.Range(0, 50_000).Select(i => new Suanli.Core.Market.Order(i, rng.Next(1000), rng.Next(1, 9), rng.Next(500, 1500), i))];
        _asks = [.. Enumerable.Range(0, 50_000).Select(i => new Suanli.Core.Market.Order(100_000 + i, rng.Next(100), rng.Next(1, 9), rng.Next(400, 1400), i))];
    }

    [Benchmark]
    public long Clear100kOrders() => Suanli.Core.Market.CallMarket.Clear(_bids, _asks).Volume;
}
