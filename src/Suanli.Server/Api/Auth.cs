using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>Who is calling: the key's role and what it is bound to.</summary>
public sealed record Principal(long KeyId, string Role, long? TenantId, long? ProviderId)
{
    public bool IsOperator => Role == Roles.Operator;
}

/// <summary>
/// API keys: 256 random bits, shown once, stored as SHA-256 (a fast hash is right for high-entropy secrets; slow
/// password hashes exist for low-entropy ones). Lookups are cached for a few seconds; revocation clears the cache.
/// </summary>
public sealed class KeyService(IControlStore store, TimeProvider time)
{
    private readonly ConcurrentDictionary<string, (Principal? Principal, DateTimeOffset Until)> _cache = new(StringComparer.Ordinal);
    private static readonly TimeSpan CacheFor = TimeSpan.FromSeconds(5);

    /// <summary>Creates a key; returns its record and the secret (never stored).</summary>
    public async Task<(KeyRecord Record, string Secret)> CreateAsync(string role, long? tenantId, long? providerId, IdempotencyClaim? once = null)
    {
        var secret = "sk-" + Convert.ToBase64String(RandomNumberGenerator.GetBytes(32)).TrimEnd('=').Replace('+', '-').Replace('/', '_');
        var rec = await store.CreateKeyAsync(Hash(secret), secret[..11], role, tenantId, providerId, time.GetUtcNow().ToUnixTimeMilliseconds(), once);
        return (rec, secret);
    }

    public static byte[] Hash(string secret) => SHA256.HashData(Encoding.UTF8.GetBytes(secret));

    /// <summary>The principal of a bearer secret, or null when unknown or revoked.</summary>
    public async Task<Principal?> ResolveAsync(string secret)
    {
        if (secret.Length is < 10 or > 200)
        {
            return null;
        }

        var now = time.GetUtcNow();
        if (_cache.TryGetValue(secret, out var hit) && hit.Until > now)
        {
            return hit.Principal;
        }

        var rec = await store.FindKeyAsync(Hash(secret));
        var p = rec is null ? null : new Principal(rec.Id, rec.Role, rec.TenantId, rec.ProviderId);
        if (_cache.Count > 100_000)
        {
            _cache.Clear();
        }

        _cache[secret] = (p, now + CacheFor);
        return p;
    }

    public async Task<bool> RevokeAsync(long id)
    {
        var ok = await store.RevokeKeyAsync(id, time.GetUtcNow().ToUnixTimeMilliseconds());
        _cache.Clear();
        return ok;
    }
}

/// <summary>Endpoint filter: the caller must hold a key of one of the roles.</summary>
public sealed class RequireRole(params string[] roles) : IEndpointFilter
{
    public const string ItemKey = "suanli.principal";

    public async ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        var http = context.HttpContext;
        var header = http.Request.Headers.Authorization.ToString();
        if (!header.StartsWith("Bearer ", StringComparison.Ordinal))
        {
            return Problems.Of(StatusCodes.Status401Unauthorized, "unauthenticated", "Authorization: send 'Bearer KEY'");
        }

        var keys = http.RequestServices.GetRequiredService<KeyService>();
        var principal = await keys.ResolveAsync(header["Bearer ".Length..].Trim());
        if (principal is null)
        {
            return Problems.Of(StatusCodes.Status401Unauthorized, "unauthenticated", "Authorization: unknown or revoked key");
        }

        if (!roles.Contains(principal.Role))
        {
            return Problems.Of(StatusCodes.Status403Forbidden, "forbidden", $"this endpoint needs the role {string.Join(" or ", roles)}; the key is a {principal.Role} key");
        }

        http.Items[ItemKey] = principal;
        return await next(context);
    }
}
