using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Suanli.Server.Tests;

/// <summary>A real `suanli up` (or `suanli agent`) child process on a loopback port with its own data folder.</summary>
public sealed class ServerProcess : IDisposable
{
    private Process? _process;
    private readonly StringBuilder _output = new();

    public ServerProcess(bool localProvider = true, double lostAfterSeconds = 30, string? dataDir = null, params string[] extraArgs)
    {
        ExtraArgs = extraArgs;
        DataDir = dataDir ?? Path.Combine(Path.GetTempPath(), "suanli-test-" + Guid.NewGuid().ToString("N")[..12]);
        Port = FreePort();
        LocalProvider = localProvider;
        LostAfter = lostAfterSeconds;
        Start();
    }

    public string DataDir { get; }

    public IReadOnlyList<string> ExtraArgs { get; }

    public int Port { get; }

    public bool LocalProvider { get; }

    public double LostAfter { get; }

    public string Url => $"http://127.0.0.1:{Port}";

    /// <summary>The server's process id (a job must not be able to see or signal it).</summary>
    public int Pid => _process!.Id;

    public string AdminKey => File.ReadAllText(Path.Combine(DataDir, "admin.key")).Trim();

    public string Output
    {
        get
        {
            lock (_output)
            {
                return _output.ToString();
            }
        }
    }

    public static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    public static string SuanliDll => Path.Combine(AppContext.BaseDirectory, "suanli.dll");

    public static Process StartSuanli(StringBuilder output, IDictionary<string, string>? env, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(SuanliDll);
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["SUANLI_LANG"] = "en";
        psi.Environment["DOTNET_TC_CallCountingDelayMs"] = "0";
        foreach (var (k, v) in env ?? new Dictionary<string, string>())
        {
            psi.Environment[k] = v;
        }

        var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        p.ErrorDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    public void Start()
    {
        var args = new List<string> { "up", "--urls", Url, "--data", DataDir, "--lost-after", LostAfter.ToString(System.Globalization.CultureInfo.InvariantCulture) };
        if (!LocalProvider)
        {
            args.Add("--no-local-provider");
        }

        args.AddRange(ExtraArgs);

        _process = StartSuanli(_output, null, [.. args]);
        using var http = new HttpClient { BaseAddress = new Uri(Url) };
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < TimeSpan.FromSeconds(60))
        {
            Assert.False(_process.HasExited, "server exited during start:\n" + Output);
            try
            {
                if (http.GetAsync("/readyz").Result.StatusCode == HttpStatusCode.OK)
                {
                    return;
                }
            }
            catch (AggregateException)
            {
                // Not listening yet.
            }

            Thread.Sleep(100);
        }

        Assert.Fail("server not ready within 60 s:\n" + Output);
    }

    /// <summary>kill -9: no shutdown code runs.</summary>
    public void Kill()
    {
        if (_process is { HasExited: false })
        {
            _process.Kill(entireProcessTree: false);
            _process.WaitForExit();
        }
    }

    public HttpClient Client(string key)
    {
        var c = new HttpClient { BaseAddress = new Uri(Url), Timeout = TimeSpan.FromSeconds(60) };
        c.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return c;
    }

    public HttpClient Admin() => Client(AdminKey);

    public void Dispose()
    {
        if (_process is { HasExited: false })
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
        }

        _process?.Dispose();
        try
        {
            Directory.Delete(DataDir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>API helpers shared by the integration tests.</summary>
public static class Api
{
    public static async Task<JsonNode> Json(this HttpResponseMessage r, HttpStatusCode? expect = null)
    {
        var text = await r.Content.ReadAsStringAsync();
        if (expect is { } e)
        {
            Assert.True(r.StatusCode == e, $"expected {(int)e}, got {(int)r.StatusCode}: {text}");
        }
        else
        {
            Assert.True(r.IsSuccessStatusCode, $"{(int)r.StatusCode}: {text}");
        }

        return JsonNode.Parse(text.Length == 0 ? "{}" : text)!;
    }

    public static async Task<JsonNode> Post(this HttpClient c, string path, object body, HttpStatusCode? expect = null) =>
        await (await c.PostAsJsonAsync(path, body)).Json(expect);

    public static async Task<JsonNode> Get(this HttpClient c, string path, HttpStatusCode? expect = null) =>
        await (await c.GetAsync(path)).Json(expect);

    /// <summary>Creates a tenant and a member key; returns (tenant id, key).</summary>
    public static async Task<(long Id, string Key)> Tenant(this HttpClient admin, string name)
    {
        var t = await admin.Post("/api/v1/tenants", new { name, sector = "research" }, HttpStatusCode.Created);
        var id = t["id"]!.GetValue<long>();
        var k = await admin.Post($"/api/v1/tenants/{id}/keys", new { }, HttpStatusCode.Created);
        return (id, k["key"]!.GetValue<string>());
    }

    /// <summary>Creates a provider and an agent key; returns (provider id, key).</summary>
    public static async Task<(long Id, string Key)> Provider(this HttpClient admin, string name)
    {
        var p = await admin.Post("/api/v1/providers", new { name, region = "r1" }, HttpStatusCode.Created);
        var id = p["id"]!.GetValue<long>();
        var k = await admin.Post($"/api/v1/providers/{id}/keys", new { }, HttpStatusCode.Created);
        return (id, k["key"]!.GetValue<string>());
    }

    public static object Job(string name, string[] command, int timeLimit = 60, object? retry = null, double cpu = 0.5) =>
        new { name, command, resources = new { cpu, memoryMiB = 64 }, timeLimitSeconds = timeLimit, retry };

    /// <summary>Polls a job until <paramref name="done"/> holds or the timeout passes.</summary>
    public static async Task<JsonNode> WaitJob(this HttpClient c, long id, Func<JsonNode, bool> done, double seconds = 30)
    {
        var sw = Stopwatch.StartNew();
        JsonNode j;
        do
        {
            j = await c.Get($"/api/v1/jobs/{id}");
            if (done(j))
            {
                return j;
            }

            await Task.Delay(100);
        }
        while (sw.Elapsed < TimeSpan.FromSeconds(seconds));

        Assert.Fail($"job {id} did not reach the expected state in {seconds} s; last: {j.ToJsonString()}");
        return j;
    }

    public static string State(this JsonNode j) => j["state"]!.GetValue<string>();

    public static readonly JsonSerializerOptions Web = new(JsonSerializerDefaults.Web);
}
