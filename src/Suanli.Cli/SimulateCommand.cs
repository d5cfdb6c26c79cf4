using System.CommandLine;
using Stopwatch = System.Diagnostics.Stopwatch;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Suanli.Core.Domain;
using Suanli.Core.Scheduling;
using Suanli.Simulation.Engine;
using Suanli.Simulation.Protocols;
using Suanli.Simulation.Traces;

namespace Suanli.Cli;

/// <summary>Exit codes of the CLI.</summary>
internal static class ExitCodes
{
    public const int Ok = 0;
    public const int Internal = 1;
    public const int BadInput = 2;
    public const int MissingFile = 3;
}

/// <summary><c>suanli simulate</c>: replays a trace through the scheduling core, or runs a published protocol.</summary>
internal static class SimulateCommand
{
    internal static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web) { WriteIndented = true };

    public static Command Build()
    {
        var trace = new Option<string>("--trace") { Description = "Trace file (.swf[.gz], Philly CSV, openb pod CSV)", Required = true };
        var format = new Option<string?>("--format") { Description = "swf | philly | pai (default: from the file name)" };
        var cluster = new Option<string?>("--cluster") { Description = "Cluster file (YAML or JSON); default: the trace's own cluster" };
        var policy = new Option<string?>("--policy") { Description = "fcfs | sjf | saf | f1 | fair-share | suanli; under --protocol fgd: random | bestfit | dotprod | gpu-packing | gpu-clustering | fgd" };
        var placement = new Option<string>("--placement") { Description = "Placement: bestfit | spread | price | latency | heterogeneity | fgd | dotprod | gpu-packing | gpu-clustering", DefaultValueFactory = _ => "bestfit" };
        var backfill = new Option<string?>("--backfill") { Description = "none | easy | conservative | protocol (omitted: the policy's own, EASY)" };
        var protocol = new Option<string?>("--protocol") { Description = "rlscheduler | fgd" };
        var seed = new Option<int?>("--seed") { Description = "Seed (fgd: one seed instead of 42..51)" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object" };
        var jobsOut = new Option<string?>("--jobs-out") { Description = "Write per-job CSV here" };
        var dependencies = new Option<bool>("--dependencies") { Description = "SWF: honour field 17 (preceding job) as an afterany dependency / 按 SWF 第 17 字段（前序作业）设置依赖" };
        var cmd = new Command("simulate", "Replay a trace through the scheduler / 用调度器回放作业轨迹")
        {
            trace, format, cluster, policy, placement, backfill, protocol, seed, json, jobsOut, dependencies,
        };
        cmd.SetAction(r => Guard(() => Run(
            r.GetValue(trace)!, r.GetValue(format), r.GetValue(cluster), r.GetValue(policy), r.GetValue(placement)!,
            r.GetValue(backfill), r.GetValue(protocol), r.GetValue(seed), r.GetValue(json), r.GetValue(jobsOut), r.GetValue(dependencies))));
        return cmd;
    }

    /// <summary>Maps expected failures to messages and exit codes.</summary>
    internal static int Guard(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e) when (e is ArgumentException or ClusterFileException or FormatException)
        {
            Console.Error.WriteLine($"{Messages.Error}: {e.Message.Split(" (Parameter", 2)[0]}");
            return ExitCodes.BadInput;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or InvalidDataException)
        {
            Console.Error.WriteLine($"{Messages.Error}: {e.Message}");
            return ExitCodes.MissingFile;
        }
    }

    private static int Run(string tracePath, string? formatText, string? clusterPath, string? policyName, string placement,
        string? backfillText, string? protocol, int? seed, bool json, string? jobsOut, bool dependencies)
    {
        if (!File.Exists(tracePath))
        {
            throw new FileNotFoundException(Messages.T($"trace file '{tracePath}' does not exist", $"轨迹文件 '{tracePath}' 不存在"));
        }

        var format = formatText is null ? TraceFiles.Guess(tracePath) : formatText switch
        {
            "swf" => TraceFormat.Swf,
            "philly" => TraceFormat.Philly,
            "pai" => TraceFormat.Pai,
            _ => throw new ArgumentException($"--format: unknown format '{formatText}'; choose swf, philly or pai"),
        };
        var sw = Stopwatch.StartNew();
        return protocol switch
        {
            null => RunReplay(tracePath, format, clusterPath, policyName ?? "fcfs", placement, backfillText, json, jobsOut, dependencies, sw),
            _ when dependencies => throw new ArgumentException("--dependencies: only without --protocol (the protocols define their own replay)"),
            "rlscheduler" when format == TraceFormat.Swf => RunRl(tracePath, policyName ?? "fcfs", backfillText, json, sw),
            "rlscheduler" => throw new ArgumentException("--protocol rlscheduler: needs an SWF trace"),
            "fgd" when format == TraceFormat.Pai => RunFgd(tracePath, policyName ?? "fgd", seed, json, sw),
            "fgd" => throw new ArgumentException("--protocol fgd: needs an openb pod list (--format pai)"),
            _ => throw new ArgumentException($"--protocol: unknown protocol '{protocol}'; choose rlscheduler or fgd"),
        };
    }

    internal static BackfillMode ParseBackfill(string? text) => text switch
    {
        null or "easy" => BackfillMode.Easy,
        "none" => BackfillMode.None,
        "conservative" => BackfillMode.Conservative,
        "protocol" => throw new ArgumentException("--backfill protocol: only with --protocol rlscheduler"),
        _ => throw new ArgumentException($"--backfill: unknown mode '{text}'; choose none, easy, conservative or protocol"),
    };

    private static int RunReplay(string tracePath, TraceFormat format, string? clusterPath, string policyName, string placement,
        string? backfillText, bool json, string? jobsOut, bool dependencies, Stopwatch sw)
    {
        var mode = ParseBackfill(backfillText);
        if (dependencies && format != TraceFormat.Swf)
        {
            throw new ArgumentException("--dependencies: only for SWF traces (field 17)");
        }

        var trace = TraceFiles.Load(tracePath, format, dependencies);
        var pool = clusterPath is not null ? ClusterFile.Load(clusterPath)
            : trace.DefaultPool ?? throw new ArgumentException("--cluster: this trace implies no cluster; pass a cluster file");
        var typical = placement is "fgd" or "suanli" && format == TraceFormat.Pai
            ? FgdProtocol.TypicalTasks(PaiReader.ReadTasks(tracePath, new Trace())) : null;
        var policy = PolicyRegistry.Build(policyName, pool, placement, mode, typical: typical);
        var loaded = sw.Elapsed.TotalSeconds;
        var result = new Simulator(pool, policy).Run(trace.Jobs);
        var simulated = sw.Elapsed.TotalSeconds - loaded;
        var report = SimulationReport.Build(result, trace, sw.Elapsed.TotalSeconds, loaded, simulated);
        if (jobsOut is not null)
        {
            WriteJobs(jobsOut, result.Jobs);
        }

        if (json)
        {
            Console.WriteLine(JsonSerializer.Serialize(report, Json));
        }
        else
        {
            PrintTable(report);
        }

        return ExitCodes.Ok;
    }

    private static void WriteJobs(string path, IEnumerable<JobOutcome> jobs)
    {
        var sb = new StringBuilder("id,tenant,provider,group,submit,start,end,run,tasks,wait,boundedSlowdown,cost\n");
        foreach (var j in jobs)
        {
            sb.Append(CultureInfo.InvariantCulture, $"{j.Id},{j.Tenant},{j.Provider},{j.Group},{j.Submit},{j.Start},{j.End},{j.Run},{j.Tasks},{j.Wait},{j.BoundedSlowdown:0.####},{j.Cost}\n");
        }

        File.WriteAllText(path, sb.ToString());
    }

    private static void PrintTable(SimulationReport r)
    {
        void Row(string k, string v) => Console.WriteLine($"{k,-34} {v}");
        Row(Messages.Jobs, r.Jobs.ToString(CultureInfo.InvariantCulture));
        Row(Messages.Skipped, $"{r.Skipped} (+{r.Malformed} malformed)");
        Row(Messages.AvgBsld, r.AvgBoundedSlowdown.ToString("F2", CultureInfo.InvariantCulture));
        Row(Messages.AvgWait, r.AvgWaitSeconds.ToString("F1", CultureInfo.InvariantCulture));
        Row(Messages.WaitPct, $"{r.P50WaitSeconds:F0} / {r.P95WaitSeconds:F0} / {r.P99WaitSeconds:F0}");
        Row(Messages.AvgJct, r.AvgJctSeconds.ToString("F1", CultureInfo.InvariantCulture));
        Row(Messages.Utilization, r.Utilization.ToString("P2", CultureInfo.InvariantCulture));
        Row(Messages.Makespan, r.MakespanSeconds.ToString(CultureInfo.InvariantCulture));
        if (r.Cost is { } c)
        {
            Row(Messages.Cost, c.ToString("F2", CultureInfo.InvariantCulture));
        }

        Row(Messages.Wall, r.WallSeconds.ToString("F3", CultureInfo.InvariantCulture));
        foreach (var e in r.SkippedExamples)
        {
            Console.WriteLine("  " + e);
        }
    }

    private static int RunRl(string tracePath, string policyName, string? backfillText, bool json, Stopwatch sw)
    {
        var log = RlSchedulerProtocol.Load(tracePath);
        var order = PolicyRegistry.Order(policyName);
        List<RlSchedulerProtocol.WindowResult> windows;
        if (backfillText is "none" or "protocol")
        {
            windows = [.. RlSchedulerProtocol.Run(log, order, backfillText == "protocol").Windows];
        }
        else
        {
            // The policy's own (or a named core) backfilling: each window replayed by the general engine on N empty nodes.
            var mode = ParseBackfill(backfillText);
            var pool = Pool.Uniform(log.Nodes, new NodeShape(log.ProcsPerNode * 1000, 0));
            windows = [];
            foreach (var start in RlSchedulerProtocol.WindowStarts)
            {
                var w = new Trace();
                w.Jobs.AddRange(log.Jobs.Skip(start).Take(RlSchedulerProtocol.WindowLength).Select(j => new TraceJob(j.Spec, j.Run)));
                var result = new Simulator(pool, PolicyRegistry.Build(policyName, pool, backfill: mode)).Run(w.Jobs);
                var rep = SimulationReport.Build(result, w, 0);
                windows.Add(new(start, rep.AvgBoundedSlowdown, rep.AvgWaitSeconds, rep.Utilization, rep.MakespanSeconds));
            }
        }

        var o = new JsonObject
        {
            ["protocol"] = "rlscheduler",
            ["policy"] = policyName,
            ["backfill"] = backfillText ?? "easy",
            ["jobs"] = windows.Count * RlSchedulerProtocol.WindowLength,
            ["skipped"] = log.Diagnostics.Skipped + log.Diagnostics.Malformed,
            ["avgBoundedSlowdown"] = Math.Round(windows.Average(w => w.AvgBoundedSlowdown), 6),
            ["avgWaitSeconds"] = Math.Round(windows.Average(w => w.AvgWaitSeconds), 3),
            ["avgJctSeconds"] = null,
            ["utilization"] = Math.Round(windows.Average(w => w.Utilization), 6),
            ["makespanSeconds"] = Math.Round(windows.Average(w => (double)w.MakespanSeconds), 1),
            ["wallSeconds"] = Math.Round(sw.Elapsed.TotalSeconds, 4),
            ["windows"] = new JsonArray([.. windows.Select(w => (JsonNode)new JsonObject
            {
                ["start"] = w.Start,
                ["avgBoundedSlowdown"] = Math.Round(w.AvgBoundedSlowdown, 6),
                ["avgWaitSeconds"] = Math.Round(w.AvgWaitSeconds, 3),
                ["utilization"] = Math.Round(w.Utilization, 6),
                ["makespanSeconds"] = w.MakespanSeconds,
            })]),
        };
        if (json)
        {
            Console.WriteLine(o.ToJsonString(Json));
        }
        else
        {
            Console.WriteLine($"RLScheduler protocol, {policyName}, backfill {backfillText ?? "easy"}: {Messages.AvgBsld} = {windows.Average(w => w.AvgBoundedSlowdown):F2}");
            foreach (var w in windows)
            {
                Console.WriteLine($"  window @{w.Start,5}: {w.AvgBoundedSlowdown,10:F2}  util {w.Utilization:P1}");
            }
        }

        return ExitCodes.Ok;
    }

    private static int RunFgd(string tracePath, string policyName, int? seed, bool json, Stopwatch sw)
    {
        var inputs = FgdProtocol.Load(tracePath);
        var cooked = GoRandom.LoadRngCooked();
        var typical = FgdProtocol.TypicalTasks(inputs.Tasks);
        var seeds = seed is { } s ? [s] : FgdProtocol.Seeds;
        var results = seeds.Select(x => FgdProtocol.RunSeed(inputs, policyName, x, cooked, typical)).ToList();
        double at100 = results.Average(r => r.AllocAt100), at130 = results.Average(r => r.AllocAt130);
        var o = new JsonObject
        {
            ["protocol"] = "fgd",
            ["policy"] = policyName,
            ["jobs"] = inputs.Tasks.Count,
            ["skipped"] = inputs.Diagnostics.Malformed + inputs.Diagnostics.Skipped,
            ["avgBoundedSlowdown"] = null,
            ["avgWaitSeconds"] = null,
            ["avgJctSeconds"] = null,
            ["utilization"] = Math.Round(at130 / 100, 6),
            ["makespanSeconds"] = null,
            ["allocationRatioAt100"] = Math.Round(at100, 4),
            ["allocationRatioAt130"] = Math.Round(at130, 4),
            ["wallSeconds"] = Math.Round(sw.Elapsed.TotalSeconds, 4),
            ["seeds"] = new JsonArray([.. results.Select(r => (JsonNode)new JsonObject
            {
                ["seed"] = r.Seed,
                ["tasks"] = r.Tasks,
                ["appended"] = r.Appended,
                ["failed"] = r.Failed,
                ["allocatedGpuMilli"] = r.AllocatedGpuMilli,
                ["allocationRatioAt100"] = r.AllocAt100,
                ["allocationRatioAt130"] = r.AllocAt130,
            })]),
        };
        if (json)
        {
            Console.WriteLine(o.ToJsonString(Json));
        }
        else
        {
            Console.WriteLine($"FGD protocol, {policyName}: GPU allocation {at100:F2}% at 100% arrived, {at130:F2}% at 130% (seeds {string.Join(',', seeds)})");
        }

        return ExitCodes.Ok;
    }
}
