using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.Data.Sqlite;

namespace Suanli.Server.Tests;

/// <summary>
/// Issue 12's hostile caller: every operation of the OpenAPI document driven with hostile bodies, path ids and query
/// strings under each role; the YAML bomb; 20-way idempotency races; a provider trying to impose a contract.
/// </summary>
public sealed class HostileInputTests
{
    private static readonly string[] Bodies =
    [
        "{\"name\":\"a\\ud800\",\"sector\":\"research\"}",
        "{\"name\":\"a\",\"name\":\"b\"}",
        "{\"epoch\":\"abc\",\"state\":7,\"data\":[],\"offset\":\"x\"}",
        "{\"amount\":79228162514264337593543950335,\"price\":1e400,\"nodes\":-99999999999999999999}",
        "{\"validFrom\":\"9999-12-31T00:00:00Z\",\"validTo\":\"0001-01-01T00:00:00Z\",\"month\":\"9999-12\"}",
        "{\"groups\":[{\"id\":\"\\u0000\",\"milliCpu\":\"x\"}],\"isolation\":{}}",
        new string('[', 5000) + new string(']', 5000),
        "{\"a\":" + string.Concat(Enumerable.Repeat("{\"a\":", 100)) + "1" + new string('}', 101),
        "[1,2,3]",
        "null",
        "\"just a string\"",
        "{",
        "",
        "\u00ff\u00fe garbage",
        "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n",
        "name: x\nname: y\n",
        "name: a\ncommand: [\"true\"]\nresources: {cpu: .inf, memoryMiB: .nan}\ntimeLimitSeconds: 1e400\n",
        "#!/bin/bash\n#SBATCH --mem=99999999999999999T\n#SBATCH --export=A=\u0000b\n#SBATCH --time=99999999999:00:00\necho hi\n",
    ];

    private static readonly string[] Ids = ["abc", "-1", "0", "99999999999999999999", "1"];

    private static readonly string[] Queries = ["", "?after=abc&limit=-5", "?month=9999-12", "?month=x", "?live=maybe&state=%00", "?limit=99999999999999999999"];

    private static (string Table, long Rows)[] Counts(string dataDir)
    {
        using var c = new SqliteConnection($"Data Source={Path.Combine(dataDir, "suanli.db")};Mode=ReadOnly;Pooling=False");
        c.Open();
        return [.. new[] { "tenants", "providers", "api_keys", "jobs", "offers", "ledger_transfers", "vouchers", "voucher_programmes", "idempotency", "job_logs" }.Select(t =>
        {
            using var cmd = c.CreateCommand();
            cmd.CommandText = $"SELECT COUNT(*) FROM {t}";
            return (t, (long)cmd.ExecuteScalar()!);
        })];
    }

    [Fact]
    public async Task EveryOperation_WithHostileInput_AnswersAProblem_NeverA5xx_AndStoresNothing()
    {
        using var s = new ServerProcess(localProvider: false);
        using var admin = s.Admin();
        var (tenantId, tenantKey) = await admin.Tenant("target");
        var (providerId, providerKey) = await admin.Provider("target-provider");
        using var spec = await admin.GetAsync("/openapi/v1.json");
        var doc = JsonNode.Parse(await spec.Content.ReadAsStringAsync())!;
        var operations = doc["paths"]!.AsObject()
            .SelectMany(p => p.Value!.AsObject().Select(m => (Path: p.Key, Method: m.Key.ToUpperInvariant())))
            .Where(o => o.Path.StartsWith("/api/v1/", StringComparison.Ordinal)).ToList();
        Assert.True(operations.Count > 40, $"only {operations.Count} operations in the OpenAPI document");
        var before = Counts(s.DataDir);
        using var http = new HttpClient { BaseAddress = new Uri(s.Url), Timeout = TimeSpan.FromSeconds(30) };
        var failures = new List<string>();
        var sent = 0;
        var sw = Stopwatch.StartNew();
        var paths = doc["paths"]!.AsObject();
        var n = 0;
        foreach (var (path, method) in operations)
        {
            var takesBody = paths[path]![method.ToLowerInvariant()]!["requestBody"] is not null;
            var hasId = path.Contains('{', StringComparison.Ordinal);
            foreach (var key in new[] { s.AdminKey, tenantKey, providerKey, "sk-not-a-key" })
            {
                // Only GET may use a real id ("1"): a write with a valid id and no body to refuse could really act.
                var ids = !hasId ? ["x"] : method == "GET" ? Ids : Ids.Where(i => i != "1").ToArray();
                var requests = method is "GET" or "DELETE" || !takesBody
                    ? ids.SelectMany(id => Queries.Select(q => (Id: id, Query: q, Body: (string?)null, Type: (string?)null)))
                    : ids.SelectMany(id => Bodies.SelectMany(b =>
                        new[] { "application/json", "application/yaml", "application/x-sbatch" }.Select(t => (Id: id, Query: "", Body: (string?)b, Type: (string?)t))));
                if (key == "sk-not-a-key")
                {
                    requests = requests.Take(2);
                }

                foreach (var r in requests)
                {
                    var url = System.Text.RegularExpressions.Regex.Replace(path, "\\{[^}]+\\}", Uri.EscapeDataString(r.Id)) + r.Query;
                    using var req = new HttpRequestMessage(new HttpMethod(method), url);
                    req.Headers.TryAddWithoutValidation("Authorization", "Bearer " + key);
                    if (n++ % 5 == 0)
                    {
                        req.Headers.TryAddWithoutValidation("Idempotency-Key", "bad key " + new string('x', 200));
                    }

                    if (r.Body is not null)
                    {
                        req.Content = new ByteArrayContent(r.Body.StartsWith('\u00ff') ? [0xff, 0xfe, 0x00, 0x41] : Encoding.UTF8.GetBytes(r.Body));
                        req.Content.Headers.ContentType = MediaTypeHeaderValue.Parse(r.Type!);
                    }

                    using var resp = await http.SendAsync(req);
                    sent++;
                    var text = await resp.Content.ReadAsStringAsync();
                    var status = (int)resp.StatusCode;
                    if (status >= 500)
                    {
                        failures.Add($"{method} {url} [{r.Type}] {r.Body?[..Math.Min(40, r.Body.Length)]}: {status} {text[..Math.Min(200, text.Length)]}");
                    }
                    else if (status >= 400 && !(resp.Content.Headers.ContentType?.MediaType == "application/problem+json" && JsonNode.Parse(text)?["code"] is not null))
                    {
                        failures.Add($"{method} {url}: {status} without a problem body: {text[..Math.Min(120, text.Length)]}");
                    }
                    else if (status is >= 200 and < 300 && method != "GET" && takesBody)
                    {
                        failures.Add($"{method} {url} [{r.Type}] {r.Body?[..Math.Min(40, r.Body.Length)]}: accepted hostile input ({status})");
                    }
                }
            }
        }

        Assert.True(failures.Count == 0, $"{failures.Count} of {sent} requests misbehaved:\n" + string.Join("\n", failures.Distinct().Take(40)));
        Assert.Equal(before, Counts(s.DataDir));
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/readyz")).StatusCode);
        Assert.True(sw.Elapsed < TimeSpan.FromMinutes(5), "the fuzz is bounded");
        _ = (tenantId, providerId);
    }

    [Fact]
    public async Task YamlAliasBomb_IsRefusedBeforeExpansion_WithMemoryFlat()
    {
        using var s = new ServerProcess(localProvider: false);
        using var admin = s.Admin();
        var (_, key) = await admin.Tenant("bomber");
        using var t = s.Client(key);
        var levels = new StringBuilder("a0: &a0 [x,x,x,x,x,x,x,x,x]\n");
        for (var i = 1; i < 9; i++)
        {
            levels.Append(CultureInfo.InvariantCulture, $"a{i}: &a{i} [{string.Join(",", Enumerable.Repeat($"*a{i - 1}", 9))}]\n");
        }

        var rss0 = Rss(s.Pid);
        foreach (var path in new[] { "/api/v1/jobs", "/api/v1/market/quote" })
        {
            for (var i = 0; i < 20; i++)
            {
                using var body = new StringContent(levels.ToString(), Encoding.UTF8, "application/yaml");
                var sw = Stopwatch.StartNew();
                var r = await (await t.PostAsync(path, body)).Json(HttpStatusCode.BadRequest);
                Assert.Equal("anchor", r["errors"]![0]!["rule"]!.GetValue<string>());
                Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5));
            }
        }

        var grown = Rss(s.Pid) - rss0;
        Assert.True(grown < 100L << 20, $"the server grew by {grown >> 20} MiB answering 40 refused bombs");
    }

    private static long Rss(int pid) =>
        long.Parse(File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;

    [Fact]
    public async Task TwentyParallelCreates_WithOneIdempotencyKey_MakeExactlyOneResource_AndAnotherBodyIsRefused()
    {
        using var s = new ServerProcess(localProvider: false);
        using var admin = s.Admin();
        var (tenantId, tenantKey) = await admin.Tenant("racer");

        async Task<List<HttpResponseMessage>> Race(string path, Func<HttpContent> body, string key) =>
            [.. await Task.WhenAll(Enumerable.Range(0, 20).Select(async _ =>
            {
                using var req = new HttpRequestMessage(HttpMethod.Post, path) { Content = body() };
                req.Headers.Add("Idempotency-Key", key);
                return await admin.SendAsync(req);
            }))];

        var keys = await Race($"/api/v1/tenants/{tenantId}/keys", () => new StringContent(""), "k-1");
        Assert.All(keys, r => Assert.True(r.StatusCode is HttpStatusCode.Created or HttpStatusCode.OK, r.StatusCode.ToString()));
        Assert.Single(keys, r => r.StatusCode == HttpStatusCode.Created);
        var ids = await Task.WhenAll(keys.Select(async r => (await r.Json())["id"]!.GetValue<long>()));
        Assert.Single(ids.Distinct());
        var live = (await admin.Get("/api/v1/keys"))["items"]!.AsArray().Count(k => k!["tenantId"]?.GetValue<long>() == tenantId && k["revokedMs"] is null);
        Assert.Equal(2, live); // the one from Tenant() and the one the race made

        foreach (var (path, json) in new[] { ("/api/v1/tenants", """{"name":"raced-tenant","sector":"research"}"""), ("/api/v1/providers", """{"name":"raced-provider"}""") })
        {
            var made = await Race(path, () => new StringContent(json, Encoding.UTF8, "application/json"), "k-2");
            Assert.Single(made, r => r.StatusCode == HttpStatusCode.Created);
            Assert.Single((await Task.WhenAll(made.Select(async r => (await r.Json())["id"]!.GetValue<long>()))).Distinct());
            using var other = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json.Replace("raced", "other", StringComparison.Ordinal), Encoding.UTF8, "application/json") };
            other.Headers.Add("Idempotency-Key", "k-2");
            Assert.Equal("id_reused", (await (await admin.SendAsync(other)).Json(HttpStatusCode.Conflict))["code"]!.GetValue<string>());
        }

        using var t = s.Client(tenantKey);
        var jobs = await Task.WhenAll(Enumerable.Range(0, 20).Select(async _ =>
        {
            using var req = new HttpRequestMessage(HttpMethod.Post, "/api/v1/jobs") { Content = JsonContent.Create(Api.Job("once", ["true"])) };
            req.Headers.Add("Idempotency-Key", "job-1");
            return await t.SendAsync(req);
        }));
        Assert.Single((await Task.WhenAll(jobs.Select(async r => (await r.Json())["id"]!.GetValue<long>()))).Distinct());
        using var changed = new HttpRequestMessage(HttpMethod.Post, "/api/v1/jobs") { Content = JsonContent.Create(Api.Job("once", ["false"])) };
        changed.Headers.Add("Idempotency-Key", "job-1");
        Assert.Equal("id_reused", (await (await t.SendAsync(changed)).Json(HttpStatusCode.Conflict))["code"]!.GetValue<string>());
    }

    [Fact]
    public async Task AProvider_CannotImposeAContract_TheTenantMustAcceptBeforeItsWindow_AndOnlyThePartiesSeeIt()
    {
        using var s = new ServerProcess();
        using var admin = s.Admin();
        var local = (await admin.Get("/api/v1/providers"))["items"]!.AsArray().Single(p => p!["name"]!.GetValue<string>() == "local")!["id"]!.GetValue<long>();
        var (victimId, victimKey) = await admin.Tenant("victim");
        var (_, bystanderKey) = await admin.Tenant("bystander");
        await admin.Post($"/api/v1/wallets/{victimId}/topups", new { amount = 1000 }, HttpStatusCode.Created);
        var (_, sellerKey) = await admin.Provider("seller");
        using var victim = s.Client(victimKey);
        using var bystander = s.Client(bystanderKey);
        using var localKey = s.Client(File.ReadAllText(Path.Combine(s.DataDir, "local-provider.key")).Trim());
        using var seller = s.Client(sellerKey);

        async Task<long> Held() => (await admin.Get($"/api/v1/wallets/{victimId}"))["heldFen"]!.GetValue<long>();
        async Task<long> Balance() => (await admin.Get($"/api/v1/wallets/{victimId}"))["balanceFen"]!.GetValue<long>();

        // A window in the past is refused outright.
        var past = await (await localKey.PostAsJsonAsync("/api/v1/offers", new { group = "local", tier = "reserved", unit = "core-hour", price = 1, nodes = 1, tenantId = victimId,
            validFrom = "2026-11-01T00:00:00Z", validTo = "2026-11-30T00:00:00Z" })).Json(HttpStatusCode.BadRequest);
        Assert.Contains(past["errors"]!.AsArray(), e => e!["field"]!.GetValue<string>() == "validFrom" && e["rule"]!.GetValue<string>() == "future");

        // A proposal binds nobody: nothing is held, and withdrawing it charges nothing.
        var from = DateTimeOffset.UtcNow.AddSeconds(5);
        var proposal = await localKey.Post("/api/v1/offers", new { group = "local", tier = "reserved", unit = "core-hour", price = 36000, nodes = 1, tenantId = victimId,
            validFrom = from.ToString("O"), validTo = from.AddSeconds(2).ToString("O") }, HttpStatusCode.Created);
        Assert.Equal("proposed", proposal["consent"]!.GetValue<string>());
        Assert.False(proposal["live"]!.GetValue<bool>());
        Assert.Equal(0, await Held());
        var id = proposal["id"]!.GetValue<long>();

        // Only the two parties and the operator see it; nobody else may accept it.
        Assert.DoesNotContain((await bystander.Get("/api/v1/offers"))["items"]!.AsArray(), o => o!["id"]!.GetValue<long>() == id);
        Assert.DoesNotContain((await seller.Get("/api/v1/offers"))["items"]!.AsArray(), o => o!["id"]!.GetValue<long>() == id);
        Assert.Contains((await victim.Get("/api/v1/offers"))["items"]!.AsArray(), o => o!["id"]!.GetValue<long>() == id);
        Assert.Contains((await localKey.Get("/api/v1/offers"))["items"]!.AsArray(), o => o!["id"]!.GetValue<long>() == id);
        await (await bystander.PostAsync($"/api/v1/offers/{id}/accept", null)).Json(HttpStatusCode.NotFound);
        await (await localKey.PostAsync($"/api/v1/offers/{id}/accept", null)).Json(HttpStatusCode.Forbidden);
        Assert.Equal((0L, 100_000L), (await Held(), await Balance()));

        // The tenant accepts: the value is held now, paid when the window ends; accepting twice is refused.
        var accepted = await (await victim.PostAsync($"/api/v1/offers/{id}/accept", null)).Json(HttpStatusCode.OK);
        Assert.Equal(("accepted", "held"), (accepted["consent"]!.GetValue<string>(), accepted["contractState"]!.GetValue<string>()));
        var value = accepted["contractFen"]!.GetValue<long>();
        Assert.True(value > 0);
        Assert.Equal(value, await Held());
        Assert.Equal("already_answered", (await (await victim.PostAsync($"/api/v1/offers/{id}/accept", null)).Json(HttpStatusCode.Conflict))["code"]!.GetValue<string>());

        // A second proposal whose window begins before the tenant answers can no longer be accepted.
        var late = await localKey.Post("/api/v1/offers", new { group = "local", tier = "reserved", unit = "core-hour", price = 1, nodes = 1, tenantId = victimId,
            validFrom = DateTimeOffset.UtcNow.AddSeconds(1).ToString("O"), validTo = DateTimeOffset.UtcNow.AddSeconds(2).ToString("O") }, HttpStatusCode.Created);
        await Task.Delay(1500);
        Assert.Equal("window_started", (await (await victim.PostAsync($"/api/v1/offers/{late["id"]}/accept", null)).Json(HttpStatusCode.Conflict))["code"]!.GetValue<string>());

        // A declined proposal is final and charges nothing.
        var third = await localKey.Post("/api/v1/offers", new { group = "local", tier = "reserved", unit = "core-hour", price = 1, nodes = 1, tenantId = victimId,
            validFrom = DateTimeOffset.UtcNow.AddHours(1).ToString("O"), validTo = DateTimeOffset.UtcNow.AddHours(2).ToString("O") }, HttpStatusCode.Created);
        Assert.Equal("declined", (await (await victim.PostAsync($"/api/v1/offers/{third["id"]}/decline", null)).Json(HttpStatusCode.OK))["consent"]!.GetValue<string>());
        Assert.Equal(value, await Held());

        // The accepted contract settles at its window's end: exactly its value, once.
        var sw = Stopwatch.StartNew();
        while (await Held() != 0 && sw.Elapsed < TimeSpan.FromSeconds(20))
        {
            await Task.Delay(250);
        }

        Assert.Equal((0L, 100_000L - value), (await Held(), await Balance()));
        var verify = await admin.Get("/api/v1/ledger/verify");
        Assert.True(verify["ok"]!.GetValue<bool>(), verify.ToJsonString());
    }
}
