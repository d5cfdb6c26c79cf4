using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Suanli.Cli;

/// <summary>An error answer of the server (RFC 9457 problem), or an unreachable server.</summary>
internal sealed class ApiException(int status, string code, string message) : Exception(message)
{
    public int Status { get; } = status;

    public string Code { get; } = code;
}

/// <summary>Thin HTTP client of the /api/v1 API for the CLI.</summary>
internal sealed class ApiClient : IDisposable
{
    private readonly HttpClient _http;

    public ApiClient(string server, string key)
    {
        _http = new HttpClient { BaseAddress = new Uri(server), Timeout = TimeSpan.FromSeconds(100) };
        _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
    }

    public Uri Server => _http.BaseAddress!;

    /// <summary>
    /// Server: --server, else SUANLI_SERVER, else http://127.0.0.1:8080. Key: --key, else SUANLI_KEY, else the operator
    /// key file ./.suanli/admin.key that <c>suanli up</c> writes.
    /// </summary>
    public static ApiClient From(string? server, string? key)
    {
        server ??= Environment.GetEnvironmentVariable("SUANLI_SERVER") ?? "http://127.0.0.1:8080";
        key ??= Environment.GetEnvironmentVariable("SUANLI_KEY");
        if (key is null && File.Exists(Path.Combine(".suanli", "admin.key")))
        {
            key = File.ReadAllText(Path.Combine(".suanli", "admin.key")).Trim();
        }

        if (key is null)
        {
            throw new ArgumentException(Messages.T("--key: no key; pass --key, set SUANLI_KEY, or run in the folder where 'suanli up' keeps .suanli/admin.key",
                "--key: 未提供密钥；请使用 --key、设置 SUANLI_KEY，或在 'suanli up' 生成 .suanli/admin.key 的目录中运行"));
        }

        if (!Uri.TryCreate(server, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
        {
            throw new ArgumentException($"--server: '{server}' is not an http(s) URL");
        }

        return new ApiClient(server, key);
    }

    public Task<JsonNode> GetAsync(string path, CancellationToken ct = default) => SendAsync(HttpMethod.Get, path, null, null, null, ct);

    public Task<JsonNode> PostAsync(string path, JsonNode? body, string? idempotencyKey = null, CancellationToken ct = default) =>
        SendAsync(HttpMethod.Post, path, body?.ToJsonString(), "application/json", idempotencyKey, ct);

    public Task<JsonNode> PostTextAsync(string path, string body, string contentType, string? idempotencyKey = null, CancellationToken ct = default) =>
        SendAsync(HttpMethod.Post, path, body, contentType, idempotencyKey, ct);

    public Task<JsonNode> DeleteAsync(string path) => SendAsync(HttpMethod.Delete, path, null, null, null, default);

    private async Task<JsonNode> SendAsync(HttpMethod method, string path, string? body, string? contentType, string? idempotencyKey, CancellationToken ct)
    {
        using var req = new HttpRequestMessage(method, path);
        if (body is not null)
        {
            req.Content = new StringContent(body, Encoding.UTF8, contentType!);

            // A large body waits for the server's go-ahead, so a refusal (413) arrives instead of a broken upload.
            req.Headers.ExpectContinue = body.Length > 65536;
        }

        if (idempotencyKey is not null)
        {
            req.Headers.Add("Idempotency-Key", idempotencyKey);
        }

        HttpResponseMessage resp;
        try
        {
            resp = await _http.SendAsync(req, ct);
        }
        catch (HttpRequestException e)
        {
            throw new ApiException(0, "unreachable", Messages.T($"cannot reach {_http.BaseAddress}: {e.Message}", $"无法连接 {_http.BaseAddress}：{e.Message}"));
        }

        using (resp)
        {
            var text = await resp.Content.ReadAsStringAsync(ct);
            if (resp.IsSuccessStatusCode && resp.Content.Headers.ContentType?.MediaType == "text/csv")
            {
                return JsonValue.Create(text);
            }

            JsonNode? node = null;
            try
            {
                node = text.Length > 0 ? JsonNode.Parse(text) : new JsonObject();
            }
            catch (JsonException)
            {
                // Not JSON (a proxy's page, say): reported below.
            }

            if (!resp.IsSuccessStatusCode)
            {
                var detail = node?["detail"]?.GetValue<string>() ?? text;
                if (node?["errors"] is JsonArray errs && errs.Count > 0)
                {
                    detail = string.Join("; ", errs.Select(e => $"{e?["field"]}: {e?["message"]}"));
                }

                throw new ApiException((int)resp.StatusCode, node?["code"]?.GetValue<string>() ?? "http_error", detail);
            }

            return node ?? throw new ApiException((int)resp.StatusCode, "bad_response", "the server did not answer with JSON");
        }
    }

    public void Dispose() => _http.Dispose();
}
