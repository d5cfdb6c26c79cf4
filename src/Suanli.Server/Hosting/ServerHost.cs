using System.Diagnostics;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.WebUtilities;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Prometheus;
using Scalar.AspNetCore;
using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>Where the server listens and keeps its data.</summary>
public sealed record ServerOptions(string Urls, string DataDir, ControlPlaneOptions ControlPlane, LogLevel LogLevel = LogLevel.Warning);

/// <summary>Builds and starts the control plane web application.</summary>
public static partial class ServerHost
{
    /// <summary>The operator key file under the data directory.</summary>
    public const string AdminKeyFile = "admin.key";

    /// <summary>Builds the app: opens (and migrates) the store, recovers state, ensures an operator key exists.</summary>
    /// <exception cref="ArgumentException">An option is out of its range (every broken one is named).</exception>
    public static async Task<WebApplication> BuildAsync(ServerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.ControlPlane.Problems() is { Count: > 0 } problems)
        {
            throw new ArgumentException("--" + string.Join("; --", problems));
        }

        Directory.CreateDirectory(options.DataDir);
        if (!OperatingSystem.IsWindows())
        {
            // The database, its WAL and the key files: for the platform's own user only (jobs run as other accounts).
            File.SetUnixFileMode(options.DataDir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        // One writer: a second control plane on this data folder would serve the same database and fence the first
        // one's agents in a loop. The lock is held for the life of the process (the OS drops it when it dies).
        var dataLock = DataFolderLock.Acquire(options.DataDir);
        var store = SqliteStore.Open(Path.Combine(options.DataDir, "suanli.db"));
        // Content root away from the working folder (where the data folder usually is), and no configuration file
        // watching: a file watcher over a busy SQLite folder only burns CPU.
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ContentRootPath = AppContext.BaseDirectory,
            Args = ["--hostBuilder:reloadConfigOnChange=false"],
        });
        builder.WebHost.UseUrls(options.Urls);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = 2 * JobDocument.MaxBodyBytes;
            k.AddServerHeader = false;
        });
        builder.Logging.SetMinimumLevel(options.LogLevel);
        builder.Logging.AddSimpleConsole(c =>
        {
            c.SingleLine = true;
            c.UseUtcTimestamp = true;
            c.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ ";
        });
        var metrics = new ServerMetrics();
        builder.Services.AddSingleton(dataLock);
        builder.Services.AddSingleton<IControlStore>(store);
        builder.Services.AddSingleton<ILedgerStore>(store);
        builder.Services.AddSingleton(TimeProvider.System);
        builder.Services.AddSingleton(metrics);
        builder.Services.AddSingleton(options.ControlPlane);
        builder.Services.AddSingleton<ControlPlane>();
        builder.Services.AddHostedService<Scheduling.SchedulingLoop>();
        builder.Services.AddSingleton<KeyService>();
        builder.Services.AddProblemDetails();
        builder.Services.AddExceptionHandler<CallerFaultHandler>();
        // A query or route value that does not bind (logs?after=abc) throws, so the handler below answers with a problem
        // naming the parameter instead of an empty 400.
        builder.Services.Configure<Microsoft.AspNetCore.Routing.RouteHandlerOptions>(o => o.ThrowOnBadRequest = true);
        builder.Services.AddOpenApi(OpenApiContract.Configure);
        builder.Services.ConfigureHttpJsonOptions(j => j.SerializerOptions.PropertyNamingPolicy = System.Text.Json.JsonNamingPolicy.CamelCase);

        var app = builder.Build();
        var latency = Metrics.WithCustomRegistry(metrics.Registry).CreateHistogram("suanli_api_request_duration_seconds", "API request latency.",
            new HistogramConfiguration { LabelNames = ["method", "route", "status"], Buckets = Histogram.ExponentialBuckets(0.0002, 2, 16) });
        app.UseExceptionHandler(e => e.Run(async ctx => await ErrorMapping.ToProblem(ctx.Features.Get<IExceptionHandlerFeature>()?.Error).ExecuteAsync(ctx)));
        // Every error answer is a problem document: the framework's own bodiless 4xx (no route, wrong method, a route
        // constraint such as {id:long} that does not match) get one here.
        app.UseStatusCodePages(async s =>
        {
            var r = s.HttpContext.Response;
            var (code, detail) = r.StatusCode switch
            {
                404 => ("not_found", $"no resource at {s.HttpContext.Request.Path}: check the path and that ids are whole numbers"),
                405 => ("method_not_allowed", $"{s.HttpContext.Request.Method} is not allowed on {s.HttpContext.Request.Path}"),
                415 => ("unsupported_media_type", "send the body as application/json (job documents: application/json, application/yaml or application/x-sbatch)"),
                401 => ("unauthenticated", "send an API key as Authorization: Bearer KEY"),
                403 => ("forbidden", "this key's role may not do this"),
                _ => ("error", ReasonPhrases.GetReasonPhrase(r.StatusCode)),
            };
            await Problems.Of(r.StatusCode, code, detail).ExecuteAsync(s.HttpContext);
        });
        app.Use(async (ctx, next) =>
        {
            var t0 = Stopwatch.GetTimestamp();
            await next(ctx);
            var route = (ctx.GetEndpoint() as RouteEndpoint)?.RoutePattern.RawText ?? "unmatched";
            latency.WithLabels(ctx.Request.Method, route, ctx.Response.StatusCode.ToString(System.Globalization.CultureInfo.InvariantCulture))
                .Observe(Stopwatch.GetElapsedTime(t0).TotalSeconds);
        });

        app.MapOpenApi("/openapi/{documentName}.json");
        app.MapScalarApiReference("/docs", o => o.WithTitle("Suanli API").WithOpenApiRoutePattern("/openapi/{documentName}.json"));
        app.MapGet("/healthz", () => Results.Text("ok")).ExcludeFromDescription();
        var ready = false;
        app.MapGet("/readyz", () => ready ? Results.Text("ready") : Results.Text("recovering", statusCode: 503)).ExcludeFromDescription();
        app.MapGet("/metrics", async ctx =>
        {
            ctx.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
            await metrics.Registry.CollectAndExportAsTextAsync(ctx.Response.Body, ctx.RequestAborted);
        }).ExcludeFromDescription();
        Endpoints.Map(app);

        await app.Services.GetRequiredService<ControlPlane>().RecoverAsync();
        await EnsureAdminKeyAsync(app.Services.GetRequiredService<KeyService>(), store, options.DataDir);
        ready = true;
        return app;
    }

    private static async Task EnsureAdminKeyAsync(KeyService keys, IControlStore store, string dataDir)
    {
        var path = Path.Combine(dataDir, AdminKeyFile);
        if (File.Exists(path) && await store.FindKeyAsync(KeyService.Hash((await File.ReadAllTextAsync(path)).Trim())) is not null)
        {
            return;
        }

        var (_, secret) = await keys.CreateAsync(Roles.Operator, null, null);
        await WriteSecretAsync(path, secret);
    }

    /// <summary>Writes a secret to a file readable only by its owner (mode 0600, set before the secret is written).</summary>
    public static async Task WriteSecretAsync(string path, string secret)
    {
        var tmp = path + ".tmp";
        var fo = new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            fo.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }

        await using (var f = new FileStream(tmp, fo))
        {
            await f.WriteAsync(System.Text.Encoding.UTF8.GetBytes(secret + "\n"));
            f.Flush(true);
        }

        File.Move(tmp, path, overwrite: true);
    }
}

/// <summary>An exclusive lock on a data folder (<c>suanli.lock</c>, flock), so one control plane at a time serves it.</summary>
public sealed class DataFolderLock : IDisposable
{
    private readonly FileStream _file;

    private DataFolderLock(FileStream file) => _file = file;

    /// <summary>Takes the lock, or throws <see cref="DataFolderInUseException"/> naming the process that holds it.</summary>
    public static DataFolderLock Acquire(string dataDir)
    {
        var path = Path.Combine(dataDir, "suanli.lock");
        FileStream file;
        try
        {
            file = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException)
        {
            var holder = File.Exists(path + ".pid") ? File.ReadAllText(path + ".pid").Trim() : "another process";
            throw new DataFolderInUseException($"data folder {dataDir} is in use by another control plane (pid {holder}); stop it first, or start this one with another --data");
        }

        File.WriteAllText(path + ".pid", Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture));
        return new DataFolderLock(file);
    }

    public void Dispose() => _file.Dispose();
}

/// <summary>The data folder is served by another control plane.</summary>
public sealed class DataFolderInUseException(string message) : IOException(message);
