using System.Net;
using System.Text;

namespace Suanli.Server.Tests;

public sealed class AuthFixture : IAsyncLifetime
{
    public ServerProcess Server { get; private set; } = null!;

    public string Operator { get; private set; } = "";

    public string TenantA { get; private set; } = "";

    public string TenantB { get; private set; } = "";

    public string Provider { get; private set; } = "";

    public long TenantAId { get; private set; }

    public long ProviderId { get; private set; }

    public long JobOfA { get; private set; }

    public async Task InitializeAsync()
    {
        Server = new ServerProcess(localProvider: false);
        Operator = Server.AdminKey;
        using var admin = Server.Admin();
        (TenantAId, TenantA) = await admin.Tenant("tenant-a");
        (_, TenantB) = await admin.Tenant("tenant-b");
        (ProviderId, Provider) = await admin.Provider("prov");
        using var a = Server.Client(TenantA);
        JobOfA = (await a.Post("/api/v1/jobs", Api.Job("a-job", ["true"]), HttpStatusCode.Created))["id"]!.GetValue<long>();
    }

    public Task DisposeAsync()
    {
        Server.Dispose();
        return Task.CompletedTask;
    }
}

public class AuthTests(AuthFixture f) : IClassFixture<AuthFixture>
{
    private const string O = "operator", T = "tenant", P = "provider";

    /// <summary>Every endpoint of /api/v1 with the roles allowed to call it.</summary>
    public static TheoryData<string, string, string> Endpoints() => new()
    {
        { "POST", "/api/v1/tenants", O },
        { "GET", "/api/v1/tenants", O + "," + T },
        { "GET", "/api/v1/tenants/1", O + "," + T },
        { "POST", "/api/v1/tenants/1/keys", O },
        { "POST", "/api/v1/providers", O },
        { "GET", "/api/v1/providers", O + "," + P },
        { "POST", "/api/v1/providers/1/keys", O },
        { "GET", "/api/v1/keys", O },
        { "DELETE", "/api/v1/keys/999999", O },
        { "POST", "/api/v1/jobs", O + "," + T },
        { "GET", "/api/v1/jobs", O + "," + T },
        { "GET", "/api/v1/jobs/{job}", O + "," + T },
        { "POST", "/api/v1/jobs/{job}/cancel", O + "," + T },
        { "GET", "/api/v1/jobs/{job}/logs", O + "," + T },
        { "GET", "/api/v1/jobs/{job}/events", O + "," + T },
        { "GET", "/api/v1/jobs/{job}/explain", O + "," + T },
        { "GET", "/api/v1/jobs/{job}/usage", O + "," + T },
        { "GET", "/api/v1/usage", O + "," + T },
        { "GET", "/api/v1/usage/reconciliation", O + "," + T },
        { "POST", "/api/v1/offers", O + "," + P },
        { "GET", "/api/v1/offers", O + "," + T + "," + P },
        { "DELETE", "/api/v1/offers/999999", O + "," + P },
        { "POST", "/api/v1/offers/999999/accept", O + "," + T },
        { "POST", "/api/v1/offers/999999/decline", O + "," + T },
        { "GET", "/api/v1/market/book", O + "," + T + "," + P },
        { "GET", "/api/v1/market/rounds", O + "," + T + "," + P },
        { "POST", "/api/v1/market/clear", O },
        { "POST", "/api/v1/market/quote", O + "," + T },
        { "GET", "/api/v1/market/summary", O },
        { "GET", "/api/v1/wallets/1", O + "," + T },
        { "POST", "/api/v1/wallets/999999/topups", O },
        { "POST", "/api/v1/providers/999999/payouts", O },
        { "GET", "/api/v1/ledger/accounts", O },
        { "GET", "/api/v1/ledger/transfers", O + "," + T },
        { "GET", "/api/v1/ledger/verify", O },
        { "GET", "/api/v1/settlements", O + "," + T + "," + P },
        { "POST", "/api/v1/voucher-programmes", O },
        { "GET", "/api/v1/voucher-programmes", O },
        { "POST", "/api/v1/voucher-programmes/999999/vouchers", O },
        { "GET", "/api/v1/voucher-programmes/999999/writeoff", O },
        { "GET", "/api/v1/vouchers", O + "," + T },
        { "POST", "/api/v1/relations", O },
        { "GET", "/api/v1/relations", O },
        { "GET", "/api/v1/statements/tenants/1", O + "," + T },
        { "GET", "/api/v1/statements/providers/1", O + "," + P },
        { "POST", "/api/v1/agent/register", P },
        { "POST", "/api/v1/agent/heartbeat", P },
        { "POST", "/api/v1/agent/lease", P },
        { "POST", "/api/v1/agent/jobs/{job}/report", P },
        { "POST", "/api/v1/agent/jobs/{job}/logs", P },
    };

    [Theory]
    [MemberData(nameof(Endpoints))]
    public async Task Endpoint_RefusesEveryOtherRole_AndUnauthenticatedCalls(string method, string pathTemplate, string allowed)
    {
        // A path on a job that does not exist: refusal must come before any lookup, and nothing can change.
        var path = pathTemplate.Replace("{job}", "987654321", StringComparison.Ordinal);
        var keys = new Dictionary<string, string> { [O] = f.Operator, [T] = f.TenantA, [P] = f.Provider };
        foreach (var (role, key) in keys)
        {
            using var c = f.Server.Client(key);
            var status = await Send(c, method, path);
            if (allowed.Split(',').Contains(role))
            {
                Assert.True(status is not (401 or 403), $"{method} {path} as {role}: got {status}, expected to be allowed");
            }
            else
            {
                Assert.True(status == 403, $"{method} {path} as {role}: got {status}, expected 403");
            }
        }

        using var none = new HttpClient { BaseAddress = new Uri(f.Server.Url) };
        Assert.Equal(401, await Send(none, method, path));
        using var bogus = f.Server.Client("sk-not-a-real-key-0000000000000");
        Assert.Equal(401, await Send(bogus, method, path));
    }

    [Fact]
    public async Task EveryApiEndpoint_IsInTheRoleTable()
    {
        using var anon = new HttpClient { BaseAddress = new Uri(f.Server.Url) };
        var doc = System.Text.Json.Nodes.JsonNode.Parse(await anon.GetStringAsync("/openapi/v1.json"))!;
        static string Norm(string p) => System.Text.RegularExpressions.Regex.Replace(p, @"\{[^}]+\}|/[0-9]+(?=/|$)", m => m.Value.StartsWith('/') ? "/{x}" : "{x}");
        var table = Endpoints().Select(row => $"{row[0]} {Norm((string)row[1])}").ToHashSet();
        foreach (var (path, ops) in doc["paths"]!.AsObject())
        {
            foreach (var (verb, _) in ops!.AsObject())
            {
                var key = $"{verb.ToUpperInvariant()} {Norm(path)}";
                Assert.True(table.Contains(key), $"{key} has no wrong-role test in AuthTests.Endpoints");
            }
        }
    }

    private static async Task<int> Send(HttpClient c, string method, string path)
    {
        using var req = new HttpRequestMessage(new HttpMethod(method), path);
        if (method == "POST")
        {
            req.Content = new StringContent("{}", Encoding.UTF8, "application/json");
        }

        using var resp = await c.SendAsync(req);
        if ((int)resp.StatusCode is 401 or 403)
        {
            var body = await resp.Content.ReadAsStringAsync();
            Assert.Contains("\"code\"", body, StringComparison.Ordinal);
            Assert.Equal("application/problem+json", resp.Content.Headers.ContentType?.MediaType);
        }

        return (int)resp.StatusCode;
    }

    [Fact]
    public async Task Tenant_SeesOnlyItsOwnJobs()
    {
        using var b = f.Server.Client(f.TenantB);
        foreach (var path in new[] { "", "/logs", "/events", "/explain" })
        {
            Assert.Equal(HttpStatusCode.NotFound, (await b.GetAsync($"/api/v1/jobs/{f.JobOfA}{path}")).StatusCode);
        }

        Assert.Equal(HttpStatusCode.NotFound, (await b.PostAsJsonAsync($"/api/v1/jobs/{f.JobOfA}/cancel", new { })).StatusCode);
        Assert.Empty((await b.Get("/api/v1/jobs"))["items"]!.AsArray());
        using var a = f.Server.Client(f.TenantA);
        Assert.Contains((await a.Get("/api/v1/jobs"))["items"]!.AsArray(), j => j!["id"]!.GetValue<long>() == f.JobOfA);
        // A tenant key cannot submit for another tenant.
        var other = await a.PostAsJsonAsync("/api/v1/jobs", new { name = "x", command = new[] { "true" }, resources = new { cpu = 1, memoryMiB = 64 }, timeLimitSeconds = 5, tenant = "tenant-b" });
        Assert.Equal(HttpStatusCode.BadRequest, other.StatusCode);
    }

    [Fact]
    public async Task Provider_ReportsOnlyItsOwnJobs()
    {
        using var p = f.Server.Client(f.Provider);
        var reg = await p.Post("/api/v1/agent/register", new { region = "r1", groups = new[] { new { id = "g", milliCpu = 1000, memoryMiB = 1024, nodes = 1, accelerators = 0 } } });
        var epoch = reg["epoch"]!.GetValue<long>();
        // Job of tenant A is queued and leased to nobody (or to this provider); a report for a job it does not hold is refused.
        var resp = await p.PostAsJsonAsync($"/api/v1/agent/jobs/{f.JobOfA + 1000}/report", new { epoch, state = "running" });
        Assert.True(resp.StatusCode is HttpStatusCode.NotFound or HttpStatusCode.Conflict, resp.StatusCode.ToString());
        var logs = await p.PostAsJsonAsync($"/api/v1/agent/jobs/{f.JobOfA + 1000}/logs", new { epoch, data = "x" });
        Assert.Equal(HttpStatusCode.Conflict, logs.StatusCode);
    }

    [Fact]
    public async Task Keys_AreStoredHashed_ShownOnce_AndRevocable()
    {
        using var admin = f.Server.Admin();
        var k = await admin.Post($"/api/v1/tenants/{f.TenantAId}/keys", new { }, HttpStatusCode.Created);
        var secret = k["key"]!.GetValue<string>();
        var id = k["id"]!.GetValue<long>();
        foreach (var file in Directory.GetFiles(f.Server.DataDir, "suanli.db*"))
        {
            using var fs = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            using var ms = new MemoryStream();
            fs.CopyTo(ms);
            Assert.DoesNotContain(secret, Encoding.UTF8.GetString(ms.ToArray()), StringComparison.Ordinal);
        }

        var listed = (await admin.Get("/api/v1/keys"))["items"]!.ToJsonString();
        Assert.DoesNotContain(secret, listed, StringComparison.Ordinal);
        using var c = f.Server.Client(secret);
        Assert.Equal(HttpStatusCode.OK, (await c.GetAsync("/api/v1/jobs")).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await admin.DeleteAsync($"/api/v1/keys/{id}")).StatusCode);
        await Task.Delay(200);
        Assert.Equal(HttpStatusCode.Unauthorized, (await c.GetAsync("/api/v1/jobs")).StatusCode);
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(f.Server.DataDir, "admin.key")));
        }
    }
}
