using System.CommandLine;
using System.Text.Json;
using Suanli.Cli;
using Suanli.Core.Scheduling;
using Suanli.Simulation.Bench;

var root = new RootCommand("Suanli (算力): compute pool, scheduler and trading centre");
root.Subcommands.Add(SimulateCommand.Build());

var bench = new Command("bench", "Benchmarks / 性能测试");
var nodes = new Option<int>("--nodes") { Description = "Nodes in the synthetic pool", DefaultValueFactory = _ => 10_000 };
var providers = new Option<int>("--providers") { Description = "Providers", DefaultValueFactory = _ => 100 };
var pending = new Option<int>("--pending") { Description = "Pending jobs", DefaultValueFactory = _ => 100_000 };
var policy = new Option<string>("--policy") { Description = "Policy", DefaultValueFactory = _ => "fcfs" };
var cycles = new Option<int>("--cycles") { Description = "Cycles to time", DefaultValueFactory = _ => 20 };
var backfill = new Option<string?>("--backfill") { Description = "none | easy | conservative" };
var json = new Option<bool>("--json") { Description = "Print one JSON object" };
var scheduler = new Command("scheduler", "Time scheduling cycles over a synthetic pool / 合成资源池调度周期耗时")
{
    nodes, providers, pending, policy, cycles, backfill, json,
};
scheduler.SetAction(r => SimulateCommand.Guard(() =>
{
    var n = r.GetValue(nodes);
    var p = r.GetValue(providers);
    var j = r.GetValue(pending);
    if (n < 2 || p < 1 || n / p < 2 || j < 1 || r.GetValue(cycles) < 1)
    {
        throw new ArgumentException("--nodes/--providers/--pending/--cycles: need nodes >= 2 per provider, providers >= 1, pending >= 1, cycles >= 1");
    }

    var res = SchedulerBench.Run(n, p, j, r.GetValue(policy)!, r.GetValue(cycles), SimulateCommand.ParseBackfill(r.GetValue(backfill)));
    Console.WriteLine(r.GetValue(json)
        ? JsonSerializer.Serialize(res, SimulateCommand.Json)
        : $"{res.Nodes} nodes / {res.Providers} providers / {res.Pending} pending: {res.DecisionsPerSecond:N0} decisions/s, cycle p50 {res.CycleMsP50:F1} ms, p99 {res.CycleMsP99:F1} ms");
    return 0;
}));
bench.Subcommands.Add(scheduler);
root.Subcommands.Add(bench);
PlatformCommands.AddTo(root, bench);

var policies = new Command("policies", "List scheduling policies and placements / 列出调度策略");
policies.SetAction(_ =>
{
    Console.WriteLine("policies:   " + string.Join(", ", PolicyRegistry.PolicyNames));
    Console.WriteLine("placements: " + string.Join(", ", PolicyRegistry.PlacementNames));
    return 0;
});
root.Subcommands.Add(policies);

return root.Parse(args).Invoke();
