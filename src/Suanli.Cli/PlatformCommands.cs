using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.DependencyInjection;
using Suanli.Agent;
using Suanli.Server;
using Suanli.Server.Storage;

namespace Suanli.Cli;

/// <summary>The platform commands: <c>up</c>, <c>agent</c> and the API client commands.</summary>
internal static partial class PlatformCommands
{
    public const int JobUnsuccessful = 4;
    public const int Unreachable = 5;
    private static readonly JsonSerializerOptions Pretty = new(JsonSerializerDefaults.Web) { WriteIndented = true };

    private static readonly Option<string?> ServerOpt = new("--server") { Description = "Control plane URL (or SUANLI_SERVER) / 控制面地址" };
    private static readonly Option<string?> KeyOpt = new("--key") { Description = "API key (or SUANLI_KEY) / API 密钥" };
    private static readonly Option<bool> JsonOpt = new("--json") { Description = "Print JSON for scripts / 输出 JSON" };

    public static void AddTo(RootCommand root, Command bench)
    {
        root.Subcommands.Add(Up());
        root.Subcommands.Add(AgentCommand());
        root.Subcommands.Add(Submit());
        root.Subcommands.Add(Jobs());
        root.Subcommands.Add(Simple("job", "Show a job / 查看作业", "/api/v1/jobs/{0}", PrintJob));
        root.Subcommands.Add(Logs());
        root.Subcommands.Add(Cancel());
        root.Subcommands.Add(Simple("explain", "Why a job waits / 解释作业等待原因", "/api/v1/jobs/{0}/explain",
            n => Console.WriteLine(string.Join('\n', n["lines"]!.AsArray().Select(l => l!.GetValue<string>())))));
        root.Subcommands.Add(Providers());
        root.Subcommands.Add(Usage());
        root.Subcommands.Add(Tenants());
        root.Subcommands.Add(Keys());
        AddMarket(root, bench);
        bench.Subcommands.Add(BenchSubmit());
        bench.Subcommands.Add(BenchLatency());
    }

    /// <summary>Runs a client command with the shared error handling and exit codes.</summary>
    private static int Client(ParseResult r, Func<ApiClient, Task<int>> body) => SimulateCommand.Guard(() =>
    {
        using var api = ApiClient.From(r.GetValue(ServerOpt), r.GetValue(KeyOpt));
        try
        {
            return body(api).GetAwaiter().GetResult();
        }
        catch (ApiException e)
        {
            Console.Error.WriteLine($"{Messages.Error}: {e.Message}{(e.Status > 0 ? $" ({e.Status} {e.Code})" : "")}");
            return e.Status == 0 ? Unreachable : e.Status is >= 400 and < 500 ? ExitCodes.BadInput : ExitCodes.Internal;
        }
    });

    private static Command WithClientOptions(Command c)
    {
        c.Options.Add(ServerOpt);
        c.Options.Add(KeyOpt);
        c.Options.Add(JsonOpt);
        return c;
    }

    private static void Print(ParseResult r, JsonNode node, Action<JsonNode> human)
    {
        if (r.GetValue(JsonOpt))
        {
            Console.WriteLine(node.ToJsonString(Pretty));
        }
        else
        {
            human(node);
        }
    }

    // ------------------------------------------------------------------ job sandbox (up and agent)
    private static readonly Option<bool> SingleUserOpt = new("--single-user")
    {
        Description = "Run jobs as your own user, without per-tenant accounts (a personal machine; refused as root) / 单用户模式：作业以当前用户运行",
    };

    private static readonly Option<long> UidBaseOpt = new("--tenant-uid-base")
    {
        Description = "Tenant N's jobs run as Unix account suanli-(BASE+N) / 租户作业账户 UID 基数", DefaultValueFactory = _ => 200_000,
    };

    private static readonly Option<string?> WorkDirOpt = new("--work-dir")
    {
        Description = "Root of the jobs' work folders, outside the data folder / 作业工作目录根",
    };

    /// <summary>The sandbox and the local backend of an agent, or why this machine cannot isolate jobs.</summary>
    private static LocalBackend LocalJobs(ParseResult r, string workRoot)
    {
        var limiter = ResourceLimiter.Detect();
        try
        {
            var sandbox = JobSandbox.Detect(new SandboxOptions { SingleUser = r.GetValue(SingleUserOpt), UidBase = r.GetValue(UidBaseOpt) }, limiter);
            return new LocalBackend(limiter, sandbox, workRoot);
        }
        catch (InvalidOperationException e)
        {
            throw new ArgumentException(e.Message, e);
        }
    }

    /// <summary>Default work root: outside the data folder (which job accounts cannot enter), one per data folder.</summary>
    private static string DefaultWorkRoot(string dataDir)
    {
        var tag = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(Path.GetFullPath(dataDir))))[..12].ToLowerInvariant();
        return JobSandbox.AgentUid == 0 ? Path.Combine("/var/lib/suanli/work", tag) : Path.Combine(Path.GetTempPath(), $"suanli-work-{JobSandbox.AgentUid}-{tag}");
    }

    // ------------------------------------------------------------------ up
    private static Command Up()
    {
        var urls = new Option<string>("--urls") { Description = "Listen address / 监听地址", DefaultValueFactory = _ => "http://127.0.0.1:8080" };
        var data = new Option<string>("--data") { Description = "Data folder (SQLite) / 数据目录", DefaultValueFactory = _ => "./.suanli" };
        var noLocal = new Option<bool>("--no-local-provider") { Description = "Do not run the in-process local provider / 不启动本地提供方" };
        var lostAfter = new Option<double>("--lost-after") { Description = "Seconds without heartbeat before a provider is lost / 心跳超时秒数", DefaultValueFactory = _ => 30 };
        var policy = new Option<string>("--policy") { Description = "Queue order / 排队策略", DefaultValueFactory = _ => "fair-share" };
        var placement = new Option<string>("--placement") { Description = "Placement: bestfit, spread, price, latency, heterogeneity, … / 放置策略", DefaultValueFactory = _ => "bestfit" };
        var latency = new Option<string?>("--latency") { Description = "Region latency file: \"FROM TO MS\" per line / 区域时延文件" };
        var localRegion = new Option<string>("--local-region") { Description = "Region of the local provider / 本地提供方区域", DefaultValueFactory = _ => "local" };
        var fee = new Option<decimal>("--fee") { Description = "Platform fee as a fraction of each settlement / 平台费率", DefaultValueFactory = _ => 0.05m };
        var outageGrace = new Option<double>("--agent-outage-grace")
        {
            Description = "Seconds agents keep their jobs running while this control plane restarts; a lost provider's running jobs are requeued only after --lost-after plus this (0: fastest failover) / 控制面重启期间代理保持作业运行的秒数",
            DefaultValueFactory = _ => 0,
        };
        var notice = new Option<double>("--spot-notice") { Description = "Seconds of warning before a spot job is preempted / 抢占通知秒数", DefaultValueFactory = _ => 120 };
        var auction = new Option<double>("--auction-interval") { Description = "Seconds between spot auction rounds / 竞价间隔秒数", DefaultValueFactory = _ => 60 };
        var logCap = new Option<long>("--log-cap-mib") { Description = "Most output stored per job attempt, MiB / 每次作业尝试保存的最大输出", DefaultValueFactory = _ => 64 };
        var preempt = new Option<bool>("--preemption") { Description = "Jobs of a higher priority class preempt lower ones (after the spot notice) / 高优先级作业可抢占低优先级作业" };
        var logLevel = new Option<Microsoft.Extensions.Logging.LogLevel>("--log-level")
        {
            Description = "Server log level: Trace, Debug, Information (one line per scheduling cycle), Warning, Error / 服务日志级别",
            DefaultValueFactory = _ => Microsoft.Extensions.Logging.LogLevel.Warning,
        };
        var logDays = new Option<double?>("--log-retention-days") { Description = "Delete output of jobs finished this many days ago (default: keep) / 作业输出保留天数" };
        var cmd = new Command("up", "Start the platform: control plane + local provider / 启动平台")
        {
            urls, data, noLocal, lostAfter, policy, placement, latency, localRegion, fee, notice, auction, SingleUserOpt, UidBaseOpt, WorkDirOpt, logCap, logDays, preempt, logLevel, outageGrace,
        };
        cmd.SetAction(r => SimulateCommand.Guard(() =>
        {
            if (r.GetValue(fee) is < 0 or >= 1 || r.GetValue(fee) * 10000 != decimal.Truncate(r.GetValue(fee) * 10000))
            {
                throw new ArgumentException("--fee: must be a fraction from 0 to below 1 with at most four decimals (0.05 = 5%)");
            }

            if (r.GetValue(logCap) is < 1 or > 1 << 20 || r.GetValue(logDays) is < 0.001 or > 36500)
            {
                throw new ArgumentException("--log-cap-mib: 1 to 1048576; --log-retention-days: 0.001 to 36500");
            }

            var dataDir = Path.GetFullPath(r.GetValue(data)!);
            LocalBackend? local = null;
            if (!r.GetValue(noLocal))
            {
                var workRoot = Path.GetFullPath(r.GetValue(WorkDirOpt) ?? DefaultWorkRoot(dataDir));
                if (workRoot == dataDir || workRoot.StartsWith(dataDir.TrimEnd('/') + "/", StringComparison.Ordinal))
                {
                    throw new ArgumentException("--work-dir: job work folders must live outside the data folder");
                }

                local = LocalJobs(r, workRoot); // refuses here, before anything starts, when jobs cannot be isolated
            }

            return RunUp(r.GetValue(urls)!, dataDir, local,
                new ControlPlaneOptions
                {
                    LostAfter = Seconds(r.GetValue(lostAfter), "--lost-after"), AgentOutageGrace = Seconds(r.GetValue(outageGrace), "--agent-outage-grace"), Policy = r.GetValue(policy)!, Placement = r.GetValue(placement)!,
                    Latency = r.GetValue(latency) is { } file ? ControlPlaneOptions.ReadLatency(file) : [],
                    LogCapBytes = r.GetValue(logCap) << 20, LogRetention = r.GetValue(logDays) is { } days ? TimeSpan.FromDays(days) : null,
                    FeeBps = (int)(r.GetValue(fee) * 10000), SpotNotice = Seconds(r.GetValue(notice), "--spot-notice"), AuctionInterval = Seconds(r.GetValue(auction), "--auction-interval"),
                    Preemption = r.GetValue(preempt),
                }, r.GetValue(localRegion)!, r.GetValue(logLevel))
                .GetAwaiter().GetResult();
        }));
        return cmd;
    }

    /// <summary>A duration option in seconds; the range is the options' to check, this only refuses what is no duration at all.</summary>
    private static TimeSpan Seconds(double value, string option) =>
        double.IsFinite(value) && Math.Abs(value) <= 1e9 ? TimeSpan.FromSeconds(value) : throw new ArgumentException($"{option}: must be a number of seconds");

    private static async Task<int> RunUp(string urls, string dataDir, LocalBackend? local, ControlPlaneOptions cp, string localRegion, Microsoft.Extensions.Logging.LogLevel logLevel)
    {
        Microsoft.AspNetCore.Builder.WebApplication app;
        try
        {
            app = await ServerHost.BuildAsync(new ServerOptions(urls, dataDir, cp, logLevel));
        }
        catch (DataFolderInUseException e)
        {
            Console.Error.WriteLine($"{Messages.Error}: {Messages.T(e.Message, $"数据目录 {dataDir} 正被另一个控制面使用；请先停止它，或用 --data 指定其他目录")}");
            return ExitCodes.BadInput;
        }

        await app.StartAsync();
        var address = urls.Split(';')[0].Replace("0.0.0.0", "127.0.0.1", StringComparison.Ordinal).Replace("[::]", "[::1]", StringComparison.Ordinal);
        Console.WriteLine(Messages.T($"Suanli control plane on {address}", $"算力控制面已启动：{address}"));
        Console.WriteLine(Messages.T($"operator key: {Path.Combine(dataDir, ServerHost.AdminKeyFile)}", $"管理员密钥文件：{Path.Combine(dataDir, ServerHost.AdminKeyFile)}"));
        Console.WriteLine(Messages.T($"API reference: {address}/docs   OpenAPI: {address}/openapi/v1.json", $"API 文档：{address}/docs   OpenAPI：{address}/openapi/v1.json"));
        using var stop = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) =>
        {
            e.Cancel = true;
            stop.Cancel();
        };
        // SIGTERM is handled by the host (graceful stop); follow it.
        app.Lifetime.ApplicationStopping.Register(stop.Cancel);
        // The local agent stops only after leasing has stopped: otherwise a job it reports interrupted could be leased
        // again, to an agent that is going away.
        using var agentStop = new CancellationTokenSource();
        Task agentTask = Task.CompletedTask;
        ProviderAgent? agent = null;
        if (local is not null)
        {
            var store = app.Services.GetRequiredService<IControlStore>();
            var keys = app.Services.GetRequiredService<KeyService>();
            var plane = app.Services.GetRequiredService<ControlPlane>();
            var provider = await store.FindProviderAsync("local") ?? await store.CreateProviderAsync("local", localRegion, TimeProvider.System.GetUtcNow().ToUnixTimeMilliseconds());
            plane.ProviderCreated(provider);
            var keyFile = Path.Combine(dataDir, "local-provider.key");
            var secret = File.Exists(keyFile) ? (await File.ReadAllTextAsync(keyFile)).Trim() : null;
            if (secret is null || await store.FindKeyAsync(KeyService.Hash(secret)) is null)
            {
                (_, secret) = await keys.CreateAsync(Roles.Provider, null, provider.Id);
                await ServerHost.WriteSecretAsync(keyFile, secret);
            }

            var (cpu, mem) = LocalBackend.MachineCapacity();
            Console.WriteLine(Messages.T($"[local provider] jobs: {local.Sandbox.Describe}", $"[本地提供方] 作业隔离：{local.Sandbox.Describe}"));
            if (!local.Sandbox.Isolated)
            {
                Console.WriteLine(Messages.T("[local provider] WARNING: single-user mode: every tenant's job runs as this user; do not admit strangers",
                    "[本地提供方] 警告：单用户模式，所有租户的作业都以当前用户运行；不要接纳陌生租户"));
            }

            agent = new ProviderAgent(new AgentOptions(new Uri(address), secret, localRegion, [new GroupOffer("local", cpu, mem, null, 0, 1, null)], dataDir)
                {
                    TakeOver = true, // the data-folder lock makes this process the only control plane, so its own agent is the one
                },
                local, m => Console.WriteLine($"[local provider] {m}"));
            agentTask = agent.RunAsync(agentStop.Token);
        }

        try
        {
            await Task.Delay(Timeout.Infinite, stop.Token);
        }
        catch (OperationCanceledException)
        {
            // Shutting down.
        }

        // Graceful stop: no new leases, then the local agent stops its jobs and reports them interrupted (requeued,
        // not charged), then the host stops.
        app.Services.GetRequiredService<ControlPlane>().StopLeasing();
        await agentStop.CancelAsync();
        await agentTask;
        if (agent is not null)
        {
            await agent.DisposeAsync();
        }

        await app.StopAsync();
        await ((IAsyncDisposable)app.Services.GetRequiredService<IControlStore>()).DisposeAsync();
        return ExitCodes.Ok;
    }

    // ------------------------------------------------------------------ agent
    private static Command AgentCommand()
    {
        var server = new Option<string>("--server") { Description = "Control plane URL / 控制面地址", Required = true };
        var key = new Option<string>("--key") { Description = "Provider key / 提供方密钥", Required = true };
        var backendOpt = new Option<string>("--backend") { Description = "Backend: local | slurm / 后端", DefaultValueFactory = _ => "local" };
        var slurmrestd = new Option<string?>("--slurmrestd") { Description = "slurmrestd endpoint: unix:/path/to.sock or an http URL (slurm backend) / slurmrestd 地址" };
        var outputDir = new Option<string?>("--output-dir") { Description = "Folder the cluster writes job output to, readable here (slurm backend) / 作业输出目录" };
        var name = new Option<string?>("--name") { Description = "Expected provider name (checked) / 提供方名称" };
        var region = new Option<string?>("--region") { Description = "Region / 区域" };
        var cpu = new Option<double?>("--cpu") { Description = "Cores offered (default: all) / 提供核数" };
        var mem = new Option<long?>("--memory-mib") { Description = "Memory offered in MiB (default: all) / 提供内存" };
        var price = new Option<decimal?>("--price") { Description = "Price per node-hour (CNY) / 每节点小时价格" };
        var takeOver = new Option<bool>("--take-over") { Description = "Replace a live agent of the same provider (its jobs are lost) / 接管该提供方正在运行的代理" };
        var cmd = new Command("agent", "Run a provider agent / 运行提供方代理") { server, key, backendOpt, slurmrestd, outputDir, name, region, cpu, mem, price, WorkDirOpt, SingleUserOpt, UidBaseOpt, takeOver };
        cmd.SetAction(r => SimulateCommand.Guard(() =>
        {
            IJobBackend backend;
            IReadOnlyList<GroupOffer> offer;
            var workDir = Path.GetFullPath(r.GetValue(WorkDirOpt) ?? Path.Combine(JobSandbox.AgentUid == 0 ? "/var/lib/suanli" : Path.GetTempPath(), "suanli-agent"));
            switch (r.GetValue(backendOpt))
            {
                case "local":
                    var (machineCpu, machineMem) = LocalBackend.MachineCapacity();
                    var milli = r.GetValue(cpu) is { } c ? (long)(c * 1000) : machineCpu;
                    var mib = r.GetValue(mem) ?? machineMem;
                    if (milli < 1 || mib < 1)
                    {
                        throw new ArgumentException("--cpu/--memory-mib: must be positive");
                    }

                    backend = LocalJobs(r, workDir);
                    Console.WriteLine($"jobs: {((LocalBackend)backend).Sandbox.Describe}");
                    offer = [new GroupOffer("local", milli, mib, null, 0, 1, r.GetValue(price))];
                    break;
                case "slurm":
                    var endpoint = r.GetValue(slurmrestd) ?? throw new ArgumentException("--slurmrestd: the slurm backend needs the slurmrestd endpoint (unix:/path or http URL)");
                    var outDir = r.GetValue(outputDir) ?? throw new ArgumentException("--output-dir: the slurm backend needs a folder the cluster writes job output to");
                    backend = new SlurmBackend(new SlurmApiV0038(SlurmApiV0038.Client(endpoint)), outDir, endpoint, r.GetValue(price));
                    offer = []; // discovered from the cluster's partitions at registration
                    break;
                default:
                    throw new ArgumentException("--backend: choose local or slurm");
            }

            var options = new AgentOptions(new Uri(r.GetValue(server)!), r.GetValue(key)!, r.GetValue(region), offer, workDir) { Name = r.GetValue(name), TakeOver = r.GetValue(takeOver) };
            using var stop = new CancellationTokenSource();
            Console.CancelKeyPress += (_, e) =>
            {
                e.Cancel = true;
                stop.Cancel();
            };
            // SIGTERM: stop gracefully (the jobs are stopped and reported as interrupted before the process exits).
            using var term = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, c =>
            {
                c.Cancel = true;
                stop.Cancel();
            });
            var agent = new ProviderAgent(options, backend, m => Console.WriteLine(m));
            try
            {
                agent.RunAsync(stop.Token).GetAwaiter().GetResult();
            }
            catch (InvalidOperationException e)
            {
                Console.Error.WriteLine($"{Messages.Error}: {e.Message}");
                return ExitCodes.BadInput;
            }
            finally
            {
                agent.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }

            return ExitCodes.Ok;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ jobs
    private static Command Submit()
    {
        var file = new Argument<string>("FILE") { Description = "Job file: YAML, JSON or an sbatch script (- for stdin) / 作业文件" };
        var wait = new Option<bool>("--wait") { Description = "Wait until the job ends, with a progress line / 等待作业结束" };
        var idem = new Option<string?>("--idempotency-key") { Description = "Make a retried submit safe / 幂等键" };
        var dryRun = new Option<bool>("--dry-run") { Description = "Print the parsed job spec and submit nothing / 仅解析不提交" };
        var tenant = new Option<string?>("--tenant") { Description = "Tenant to submit for (operator keys) / 代表的租户" };
        var cmd = WithClientOptions(new Command("submit", "Submit a job / 提交作业") { file, wait, idem, dryRun, tenant });
        cmd.SetAction(r =>
        {
            var path = r.GetValue(file)!;
            string text;
            try
            {
                text = path == "-" ? Console.In.ReadToEnd() : File.ReadAllText(path);
            }
            catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
            {
                Console.Error.WriteLine($"{Messages.Error}: {Messages.T($"job file '{path}' does not exist", $"作业文件 '{path}' 不存在")}");
                return ExitCodes.MissingFile;
            }

            var isJson = text.TrimStart().StartsWith('{');
            var isSbatch = !isJson && Sbatch.Looks(text);
            if (r.GetValue(dryRun))
            {
                return DryRun(text, isSbatch);
            }

            return Client(r, async api =>
            {
                var contentType = isJson ? "application/json" : isSbatch ? "text/x-shellscript" : "application/yaml";
                var target = "/api/v1/jobs" + (r.GetValue(tenant) is { } t ? $"?tenant={Uri.EscapeDataString(t)}" : "");
                var job = await api.PostTextAsync(target, text, contentType, r.GetValue(idem));
                var id = job["id"]!.GetValue<long>();
                if (job["arrayJobs"] is JsonArray array)
                {
                    var ids = string.Join(", ", array.Select(x => x!.ToString()));
                    Print(r, job, _ => Console.WriteLine(Messages.T($"submitted array of {array.Count} jobs: {ids}", $"已提交 {array.Count} 个数组作业：{ids}")));
                    return r.GetValue(wait) ? await WaitFor(r, api, array.Select(x => x!.GetValue<long>()).ToList()) : ExitCodes.Ok;
                }

                if (!r.GetValue(wait))
                {
                    Print(r, job, _ => Console.WriteLine(Messages.T($"submitted job {id}", $"已提交作业 {id}")));
                    return ExitCodes.Ok;
                }

                return await WaitFor(r, api, id);
            });
        });
        return cmd;
    }

    /// <summary>Parses locally and prints the job spec the server would store, or every broken rule.</summary>
    private static int DryRun(string text, bool isSbatch)
    {
        try
        {
            var doc = isSbatch ? Sbatch.ToJob(text, Core.Domain.AcceleratorCatalogue.BuiltIn) : JobDocument.Parse(text, Core.Domain.AcceleratorCatalogue.BuiltIn);
            Console.WriteLine(JsonNode.Parse(doc.ToJson())!.ToJsonString(Pretty));
            return ExitCodes.Ok;
        }
        catch (ValidationException e)
        {
            foreach (var err in e.Errors)
            {
                Console.Error.WriteLine($"{Messages.Error}: {err.Field}: {err.Message} ({err.Rule})");
            }

            return ExitCodes.BadInput;
        }
    }

    /// <summary>Waits for every job of an array; succeeds when all do.</summary>
    private static async Task<int> WaitFor(ParseResult r, ApiClient api, List<long> ids)
    {
        var worst = ExitCodes.Ok;
        foreach (var id in ids)
        {
            worst = Math.Max(worst, await WaitFor(r, api, id));
        }

        return worst;
    }

    private static async Task<int> WaitFor(ParseResult r, ApiClient api, long id)
    {
        var sw = Stopwatch.StartNew();
        var last = "";
        JsonNode job;
        while (true)
        {
            job = await api.GetAsync($"/api/v1/jobs/{id}");
            var state = job["state"]!.GetValue<string>();
            if (!r.GetValue(JsonOpt) && !Console.IsErrorRedirected)
            {
                Console.Error.Write($"\r{Messages.T("job", "作业")} {id}: {state,-10} {sw.Elapsed.TotalSeconds,6:F1} s");
            }
            else if (state != last && !r.GetValue(JsonOpt))
            {
                Console.Error.WriteLine($"{Messages.T("job", "作业")} {id}: {state}");
            }

            last = state;
            if (JobStates.IsTerminal(state))
            {
                break;
            }

            await Task.Delay(TimeSpan.FromMilliseconds(200));
        }

        if (!r.GetValue(JsonOpt) && !Console.IsErrorRedirected)
        {
            Console.Error.WriteLine();
        }

        Print(r, job, PrintJob);
        return last == JobStates.Succeeded ? ExitCodes.Ok : JobUnsuccessful;
    }

    private static void PrintJob(JsonNode j)
    {
        string S(string k) => j[k]?.ToString() ?? "-";
        Console.WriteLine($"{Messages.T("job", "作业")} {S("id")}  {S("name")}");
        Console.WriteLine($"  {Messages.T("state", "状态"),-10} {S("state")} ({Messages.T("attempt", "尝试")} {S("attempt")}/{S("maxAttempts")})");
        Console.WriteLine($"  {Messages.T("tenant", "租户"),-10} {S("tenantId")}");
        Console.WriteLine($"  {Messages.T("provider", "提供方"),-10} {S("providerId")} {S("group")}");
        Console.WriteLine($"  {Messages.T("submitted", "提交"),-10} {S("submittedAt")}");
        Console.WriteLine($"  {Messages.T("started", "开始"),-10} {S("startedAt")}");
        Console.WriteLine($"  {Messages.T("ended", "结束"),-10} {S("endedAt")}  exit {S("exitCode")} {S("reason")}");
    }

    private static Command Jobs()
    {
        var state = new Option<string?>("--state") { Description = "Only jobs in this state / 按状态过滤" };
        var limit = new Option<int>("--limit") { Description = "Page size / 每页条数", DefaultValueFactory = _ => 50 };
        var after = new Option<string?>("--after") { Description = "Cursor of the next page / 下一页游标" };
        var cmd = WithClientOptions(new Command("jobs", "List jobs / 列出作业") { state, limit, after });
        cmd.SetAction(r => Client(r, async api =>
        {
            var q = $"/api/v1/jobs?limit={r.GetValue(limit)}" + (r.GetValue(state) is { } s ? $"&state={Uri.EscapeDataString(s)}" : "")
                + (r.GetValue(after) is { } a ? $"&after={Uri.EscapeDataString(a)}" : "");
            var page = await api.GetAsync(q);
            Print(r, page, p =>
            {
                Table([Messages.T("ID", "编号"), Messages.T("NAME", "名称"), Messages.T("TENANT", "租户"), Messages.T("STATE", "状态"), Messages.T("ATTEMPT", "尝试"), Messages.T("PROVIDER", "提供方"), Messages.T("SUBMITTED", "提交时间")],
                    p["items"]!.AsArray().Select(j => new[] { j!["id"]!.ToString(), j["name"]!.ToString(), j["tenantId"]!.ToString(), j["state"]!.ToString(), j["attempt"]!.ToString(), j["providerId"]?.ToString() ?? "-", j["submittedAt"]!.ToString() }));
                if (p["next"] is { } n)
                {
                    Console.WriteLine(Messages.T($"more: --after {n}", $"更多：--after {n}"));
                }
            });
            return ExitCodes.Ok;
        }));
        return cmd;
    }

    private static Command Simple(string name, string description, string pathFormat, Action<JsonNode> human)
    {
        var id = new Argument<long>("ID") { Description = "Job id / 作业编号" };
        var cmd = WithClientOptions(new Command(name, description) { id });
        cmd.SetAction(r => Client(r, async api =>
        {
            Print(r, await api.GetAsync(string.Format(CultureInfo.InvariantCulture, pathFormat, r.GetValue(id))), human);
            return ExitCodes.Ok;
        }));
        return cmd;
    }

    private static Command Cancel()
    {
        var id = new Argument<long>("ID") { Description = "Job id / 作业编号" };
        var cmd = WithClientOptions(new Command("cancel", "Cancel a job / 取消作业") { id });
        cmd.SetAction(r => Client(r, async api =>
        {
            var j = await api.PostAsync($"/api/v1/jobs/{r.GetValue(id)}/cancel", null);
            Print(r, j, _ => Console.WriteLine(Messages.T($"job {r.GetValue(id)} cancelled", $"作业 {r.GetValue(id)} 已取消")));
            return ExitCodes.Ok;
        }));
        return cmd;
    }

    private static Command Logs()
    {
        var id = new Argument<long>("ID") { Description = "Job id / 作业编号" };
        var follow = new Option<bool>("--follow", "-f") { Description = "Keep printing until the job ends / 持续输出" };
        var attempt = new Option<int?>("--attempt") { Description = "Only this attempt's output / 仅显示该次尝试的输出" };
        var cmd = WithClientOptions(new Command("logs", "Print a job's output, attempt by attempt / 查看作业输出") { id, follow, attempt });
        cmd.SetAction(r => Client(r, async api =>
        {
            long after = 0;
            int? shown = null;
            var jid = r.GetValue(id);
            var only = r.GetValue(attempt) is { } a ? $"&attempt={a}" : "";

            // Prints every chunk after the cursor, page by page; a line on stderr marks where a later attempt begins.
            async Task<int> Drain()
            {
                var printed = 0;
                while (true)
                {
                    var items = (await api.GetAsync($"/api/v1/jobs/{jid}/logs?after={after}{only}"))["items"]!.AsArray();
                    foreach (var c in items)
                    {
                        var at = c!["attempt"]?.GetValue<int>() ?? 1;
                        if (at != shown && (shown is not null || at > 1))
                        {
                            Console.Out.Flush();
                            Console.Error.WriteLine(Messages.T($"--- attempt {at} ---", $"--- 第 {at} 次尝试 ---"));
                        }

                        shown = at;
                        Console.Out.Write(c["data"]!.GetValue<string>());
                        after = c["seq"]!.GetValue<long>();
                    }

                    printed += items.Count;
                    if (items.Count == 0)
                    {
                        return printed;
                    }
                }
            }

            while (true)
            {
                var printed = await Drain();
                if (!r.GetValue(follow))
                {
                    break;
                }

                if (printed == 0)
                {
                    var state = (await api.GetAsync($"/api/v1/jobs/{jid}"))["state"]!.GetValue<string>();
                    if (JobStates.IsTerminal(state))
                    {
                        await Drain(); // output shipped just before the final report
                        break;
                    }

                    await Task.Delay(TimeSpan.FromMilliseconds(300));
                }
            }

            return ExitCodes.Ok;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ operator
    private static Command Providers()
    {
        var cmd = WithClientOptions(new Command("providers", "List providers / 列出提供方"));
        cmd.SetAction(r => Client(r, async api =>
        {
            Print(r, await api.GetAsync("/api/v1/providers"), p => Table(
                [Messages.T("ID", "编号"), Messages.T("NAME", "名称"), Messages.T("REGION", "区域"), Messages.T("STATE", "状态"), Messages.T("EPOCH", "纪元"), Messages.T("GROUPS", "节点组"), Messages.T("ACTIVE", "运行中"), Messages.T("ISOLATION", "隔离")],
                p["items"]!.AsArray().Select(x => new[]
                {
                    x!["id"]!.ToString(), x["name"]!.ToString(), x["region"]!.ToString(), x["state"]!.ToString(), x["epoch"]!.ToString(),
                    string.Join(",", x["groups"]!.AsArray().Select(g => $"{g!["id"]}:{g["nodes"]}x{g["milliCpu"]!.GetValue<long>() / 1000}c")), x["activeJobs"]!.ToString(),
                    x["isolation"]?.ToString() is { } iso ? iso.Split(':')[0] : Messages.T("batch system", "批处理系统"),
                })));
            return ExitCodes.Ok;
        }));
        var name = new Argument<string>("NAME");
        var region = new Option<string?>("--region") { Description = "Region / 区域" };
        cmd.Subcommands.Add(CreateCommand("Create a provider (operator) / 创建提供方", "/api/v1/providers", ("provider", "提供方"),
            r => new JsonObject { ["name"] = r.GetValue(name), ["region"] = r.GetValue(region) ?? "default" }, name, region));
        return cmd;
    }

    /// <summary>A `create` subcommand that posts the body built from its arguments and prints the new id.</summary>
    private static Command CreateCommand(string description, string path, (string En, string Zh) noun, Func<ParseResult, JsonObject> body, params Symbol[] symbols)
    {
        var create = WithClientOptions(new Command("create", description));
        foreach (var symbol in symbols)
        {
            switch (symbol)
            {
                case Argument a:
                    create.Arguments.Add(a);
                    break;
                case Option o:
                    create.Options.Add(o);
                    break;
            }
        }

        create.SetAction(r => Client(r, async api =>
        {
            var made = await api.PostAsync(path, body(r));
            Print(r, made, x => Console.WriteLine(Messages.T($"{noun.En} {x["id"]} created", $"已创建{noun.Zh} {x["id"]}")));
            return ExitCodes.Ok;
        }));
        return create;
    }

    private static Command Tenants()
    {
        var cmd = WithClientOptions(new Command("tenants", "List tenants / 列出租户"));
        cmd.SetAction(r => Client(r, async api =>
        {
            Print(r, await api.GetAsync("/api/v1/tenants"), p => Table([Messages.T("ID", "编号"), Messages.T("NAME", "名称"), Messages.T("SECTOR", "行业"), Messages.T("WEIGHT", "权重")],
                p["items"]!.AsArray().Select(t => new[] { t!["id"]!.ToString(), t["name"]!.ToString(), t["sector"]!.ToString(), t["weight"]!.ToString() })));
            return ExitCodes.Ok;
        }));
        var name = new Argument<string>("NAME");
        var sector = new Option<string?>("--sector") { Description = "Sector / 行业" };
        var weight = new Option<double?>("--weight") { Description = "Fair-share weight / 公平份额权重" };
        cmd.Subcommands.Add(CreateCommand("Create a tenant (operator) / 创建租户", "/api/v1/tenants", ("tenant", "租户"), r =>
        {
            var body = new JsonObject { ["name"] = r.GetValue(name) };
            if (r.GetValue(sector) is { } s)
            {
                body["sector"] = s;
            }

            if (r.GetValue(weight) is { } w)
            {
                body["weight"] = w;
            }

            return body;
        }, name, sector, weight));
        return cmd;
    }

    private static Command Keys()
    {
        var cmd = WithClientOptions(new Command("keys", "List API keys / 列出密钥"));
        cmd.SetAction(r => Client(r, async api =>
        {
            Print(r, await api.GetAsync("/api/v1/keys"), p => Table([Messages.T("ID", "编号"), Messages.T("PREFIX", "前缀"), Messages.T("ROLE", "角色"), Messages.T("TENANT", "租户"), Messages.T("PROVIDER", "提供方"), Messages.T("REVOKED", "已吊销")],
                p["items"]!.AsArray().Select(k => new[] { k!["id"]!.ToString(), k["prefix"]!.ToString(), k["role"]!.ToString(), k["tenantId"]?.ToString() ?? "-", k["providerId"]?.ToString() ?? "-", k["revokedMs"] is null ? "-" : "yes" })));
            return ExitCodes.Ok;
        }));
        var tenant = new Option<long?>("--tenant") { Description = "Key for a member of this tenant / 租户成员密钥" };
        var provider = new Option<long?>("--provider") { Description = "Key for this provider's agent / 提供方代理密钥" };
        var create = WithClientOptions(new Command("create", "Create a key (the secret is shown once) / 创建密钥") { tenant, provider });
        create.SetAction(r => Client(r, async api =>
        {
            var path = (r.GetValue(tenant), r.GetValue(provider)) switch
            {
                ({ } t, null) => $"/api/v1/tenants/{t}/keys",
                (null, { } p) => $"/api/v1/providers/{p}/keys",
                _ => throw new ArgumentException("--tenant/--provider: give exactly one"),
            };
            var k = await api.PostAsync(path, null);
            Print(r, k, x => Console.WriteLine(x["key"]!.GetValue<string>()));
            return ExitCodes.Ok;
        }));
        var id = new Argument<long>("ID");
        var revoke = WithClientOptions(new Command("revoke", "Revoke a key / 吊销密钥") { id });
        revoke.SetAction(r => Client(r, async api =>
        {
            await api.DeleteAsync($"/api/v1/keys/{r.GetValue(id)}");
            Console.WriteLine(Messages.T($"key {r.GetValue(id)} revoked", $"密钥 {r.GetValue(id)} 已吊销"));
            return ExitCodes.Ok;
        }));
        cmd.Subcommands.Add(create);
        cmd.Subcommands.Add(revoke);
        return cmd;
    }

    private static Command Usage()
    {
        var groupBy = new Option<string>("--group-by") { Description = "tenant | sector | provider", DefaultValueFactory = _ => "tenant" };
        var bucket = new Option<string>("--bucket") { Description = "none | hour | day", DefaultValueFactory = _ => "none" };
        var reconcile = new Option<bool>("--reconcile") { Description = "Metering beside each provider's own accounting, per attempt / 与提供方记账对账" };
        var cmd = WithClientOptions(new Command("usage", "Metered use in standard units / 标准单位用量") { groupBy, bucket, reconcile });
        cmd.SetAction(r => Client(r, async api =>
        {
            if (r.GetValue(reconcile))
            {
                Print(r, await api.GetAsync("/api/v1/usage/reconciliation"), p =>
                {
                    Table([Messages.T("JOB", "作业"), Messages.T("ATTEMPT", "尝试"), Messages.T("PROVIDER", "提供方"), Messages.T("METERED-S", "平台计量秒"), Messages.T("PROVIDER-S", "提供方记账秒"), Messages.T("DIFF-S", "差异秒"), "TRES"],
                        p["items"]!.AsArray().Select(x => new[]
                        {
                            x!["jobId"]!.ToString(), x["attempt"]!.ToString(), x["provider"]!.ToString(), x["meteredSeconds"]!.ToString(),
                            x["backendSeconds"]?.ToString() ?? "-", x["differenceSeconds"]?.ToString() ?? "-", x["backendTres"]?.ToString() ?? "-",
                        }));
                    Console.WriteLine(Messages.T($"{p["attempts"]} attempts, {p["withBackendRecord"]} with a provider record, {p["differing"]} differing",
                        $"{p["attempts"]} 次尝试，{p["withBackendRecord"]} 次有提供方记录，{p["differing"]} 次不一致"));
                });
                return ExitCodes.Ok;
            }

            var page = await api.GetAsync($"/api/v1/usage?groupBy={Uri.EscapeDataString(r.GetValue(groupBy)!)}&bucket={Uri.EscapeDataString(r.GetValue(bucket)!)}");
            Print(r, page, p => Table([Messages.T("KEY", "分组"), Messages.T("BUCKET", "时段"), Messages.T("JOBS", "作业"), Messages.T("CORE-H", "核时"), Messages.T("CARD-H", "卡时"), "FP16 TFLOPS·h", "FP32 TFLOPS·h", "FP64 TFLOPS·h"],
                p["items"]!.AsArray().Select(u => new[]
                {
                    u!["key"]!.ToString(), u["bucket"]?.ToString() ?? "-", u["jobs"]!.ToString(), Num(u["coreHours"]), Num(u["cardHours"]), Num(u["fp16TflopsHours"]), Num(u["fp32TflopsHours"]), Num(u["fp64TflopsHours"]),
                })));
            return ExitCodes.Ok;
        }));
        return cmd;
    }

    private static string Num(JsonNode? n) => n is null ? "-" : n.GetValue<decimal>().ToString("0.######", CultureInfo.InvariantCulture);

    /// <summary>Prints an aligned text table (column widths count East Asian wide characters as two).</summary>
    internal static void Table(string[] header, IEnumerable<string[]> rows)
    {
        var all = new List<string[]> { header };
        all.AddRange(rows);
        var widths = header.Select((_, i) => all.Max(r => Width(r[i]))).ToArray();
        var sb = new StringBuilder();
        foreach (var row in all)
        {
            for (var i = 0; i < row.Length; i++)
            {
                sb.Append(row[i]);
                if (i < row.Length - 1)
                {
                    sb.Append(' ', widths[i] - Width(row[i]) + 2);
                }
            }

            sb.Append('\n');
        }

        Console.Write(sb.ToString());
    }

    private static int Width(string s) => s.EnumerateRunes().Sum(r => r.Value is >= 0x1100 and <= 0x115F or >= 0x2E80 and <= 0xA4CF or >= 0xAC00 and <= 0xD7A3 or >= 0xF900 and <= 0xFAFF or >= 0xFF00 and <= 0xFF60 or >= 0x20000 ? 2 : 1);

    // ------------------------------------------------------------------ benchmarks
    private static Command BenchSubmit()
    {
        var jobs = new Option<int>("--jobs") { Description = "Submissions / 提交数", DefaultValueFactory = _ => 10_000 };
        var concurrency = new Option<int>("--concurrency") { Description = "Concurrent clients / 并发数", DefaultValueFactory = _ => 64 };
        var tenant = new Option<string?>("--tenant") { Description = "Tenant to submit for when the key is an operator key (created if missing) / 租户" };
        var keep = new Option<bool>("--keep") { Description = "Leave the jobs queued (default: cancel them after timing) / 保留作业" };
        var cmd = WithClientOptions(new Command("submit", "Acknowledged durable submissions per second / 提交吞吐") { jobs, concurrency, tenant, keep });
        cmd.SetAction(r => Client(r, async api =>
        {
            var n = r.GetValue(jobs);
            var c = r.GetValue(concurrency);
            if (n is < 1 or > 10_000_000 || c is < 1 or > 4096)
            {
                throw new ArgumentException("--jobs/--concurrency: jobs 1..10000000, concurrency 1..4096");
            }

            var tenantName = await BenchTenant(api, r.GetValue(tenant));
            // Jobs that can never be placed (a provider that does not exist), so the timing measures the submit path only.
            var body = new JsonObject
            {
                ["name"] = "bench", ["command"] = new JsonArray("true"), ["resources"] = new JsonObject { ["cpu"] = 0.1, ["memoryMiB"] = 16 },
                ["timeLimitSeconds"] = 60, ["constraints"] = new JsonObject { ["providers"] = new JsonArray("bench-unplaceable") },
            };
            if (tenantName is not null)
            {
                body["tenant"] = tenantName;
            }

            var text = body.ToJsonString();
            var latencies = new double[n];
            var ids = new long[n];
            var next = -1;
            var sw = Stopwatch.StartNew();
            var workers = Enumerable.Range(0, c).Select(async _ =>
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < n)
                {
                    var t0 = Stopwatch.GetTimestamp();
                    var j = await api.PostTextAsync("/api/v1/jobs", text, "application/json");
                    latencies[i] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
                    ids[i] = j["id"]!.GetValue<long>();
                }
            }).ToList();
            await Task.WhenAll(workers);
            var seconds = sw.Elapsed.TotalSeconds;
            Array.Sort(latencies);
            var result = new JsonObject
            {
                ["jobs"] = n, ["concurrency"] = c, ["seconds"] = Math.Round(seconds, 3), ["submissionsPerSecond"] = Math.Round(n / seconds, 1),
                ["latencyMsP50"] = Math.Round(latencies[(int)(0.50 * (n - 1))], 2), ["latencyMsP99"] = Math.Round(latencies[(int)(0.99 * (n - 1))], 2),
            };
            if (!r.GetValue(keep))
            {
                foreach (var chunk in ids.Chunk(c))
                {
                    await Task.WhenAll(chunk.Select(id => api.PostAsync($"/api/v1/jobs/{id}/cancel", null)));
                }
            }

            Print(r, result, x => Console.WriteLine($"{x["submissionsPerSecond"]} {Messages.T("acknowledged submissions/s", "次确认提交/秒")}, p50 {x["latencyMsP50"]} ms, p99 {x["latencyMsP99"]} ms ({n} jobs, {c} clients)"));
            return ExitCodes.Ok;
        }));
        return cmd;
    }

    private static async Task<string?> BenchTenant(ApiClient api, string? tenant)
    {
        var me = await api.GetAsync("/api/v1/tenants");
        var items = me["items"]!.AsArray();
        if (tenant is null && items.Count == 1 && (await IsTenantKey(api)))
        {
            return null;
        }

        tenant ??= "bench";
        if (!items.Any(t => t!["name"]!.GetValue<string>() == tenant))
        {
            await api.PostAsync("/api/v1/tenants", new JsonObject { ["name"] = tenant, ["sector"] = "bench" });
        }

        return tenant;
    }

    private static async Task<bool> IsTenantKey(ApiClient api)
    {
        try
        {
            await api.GetAsync("/api/v1/keys");
            return false;
        }
        catch (ApiException e) when (e.Status == 403)
        {
            return true;
        }
    }

    private static Command BenchLatency()
    {
        var jobs = new Option<int>("--jobs") { Description = "Jobs, one at a time / 作业数", DefaultValueFactory = _ => 20 };
        var tenant = new Option<string?>("--tenant") { Description = "Tenant for an operator key / 租户" };
        var cmd = WithClientOptions(new Command("latency", "Submit-to-running latency of a trivial job / 提交到运行延迟") { jobs, tenant });
        cmd.SetAction(r => Client(r, async api =>
        {
            var n = r.GetValue(jobs);
            if (n is < 1 or > 10_000)
            {
                throw new ArgumentException("--jobs: 1..10000");
            }

            var tenantName = await BenchTenant(api, r.GetValue(tenant));
            var ms = new List<double>();
            for (var i = 0; i < n; i++)
            {
                var body = new JsonObject
                {
                    ["name"] = "latency", ["command"] = new JsonArray("true"), ["resources"] = new JsonObject { ["cpu"] = 0.1, ["memoryMiB"] = 16 }, ["timeLimitSeconds"] = 60,
                };
                if (tenantName is not null)
                {
                    body["tenant"] = tenantName;
                }

                var id = (await api.PostAsync("/api/v1/jobs", body))["id"]!.GetValue<long>();
                var deadline = Stopwatch.StartNew();
                while (deadline.Elapsed < TimeSpan.FromSeconds(30))
                {
                    var ev = (await api.GetAsync($"/api/v1/jobs/{id}/events"))["items"]!.AsArray();
                    var submitted = ev.FirstOrDefault(e => e!["state"]!.GetValue<string>() == "queued");
                    var running = ev.FirstOrDefault(e => e!["state"]!.GetValue<string>() == "running");
                    if (submitted is not null && running is not null)
                    {
                        ms.Add(running["atMs"]!.GetValue<long>() - submitted["atMs"]!.GetValue<long>());
                        break;
                    }

                    await Task.Delay(TimeSpan.FromMilliseconds(20));
                }
            }

            ms.Sort();
            var result = new JsonObject
            {
                ["jobs"] = n, ["measured"] = ms.Count,
                ["submitToRunningMsP50"] = ms.Count > 0 ? ms[(ms.Count - 1) / 2] : null, ["submitToRunningMsMax"] = ms.Count > 0 ? ms[^1] : null,
            };
            Print(r, result, x => Console.WriteLine($"submit → running: p50 {x["submitToRunningMsP50"]} ms, max {x["submitToRunningMsMax"]} ms ({ms.Count}/{n} jobs)"));
            return ms.Count == n ? ExitCodes.Ok : ExitCodes.Internal;
        }));
        return cmd;
    }
}
