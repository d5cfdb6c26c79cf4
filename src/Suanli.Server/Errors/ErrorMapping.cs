using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Http;

namespace Suanli.Server;

/// <summary>
/// The one place exceptions become RFC 9457 problems: a <see cref="SuanliException"/> with its code and status, the
/// framework's refusals of a request (body too large, wrong media type, a parameter that does not bind) with theirs;
/// anything else is an infrastructure fault or a bug, answered 500 without details (the server log has them).
/// </summary>
public static partial class ErrorMapping
{
    [GeneratedRegex("""parameter "(?<type>[^ "]+) (?<name>[^ "]+)" from""")]
    private static partial Regex BindFailure();

    /// <summary>True when <paramref name="e"/> is the caller's fault (a 4xx), false for a fault of ours (logged as an error).</summary>
    public static bool IsCallers(Exception e) => e is SuanliException or BadHttpRequestException;

    /// <summary>The problem answering <paramref name="e"/>.</summary>
    public static IResult ToProblem(Exception? e) => e switch
    {
        ValidationException v => Problems.Validation(v),
        SuanliException s => Problems.Of(s.Status, s.Code, s.Message),
        BadHttpRequestException { StatusCode: 413 } => Problems.Of(413, "body_too_large", $"body: at most {JobDocument.MaxBodyBytes} bytes"),
        BadHttpRequestException { StatusCode: 415 } b => Problems.Of(415, "unsupported_media_type", b.Message),
        BadHttpRequestException b when BindFailure().Match(b.Message) is { Success: true } m => Unbound(b, m),
        BadHttpRequestException b => Problems.Of(b.StatusCode, "bad_request", b.Message),
        _ => Problems.Of(500, "internal", "internal error; see the server log"),
    };

    private static IResult Unbound(BadHttpRequestException b, Match m)
    {
        var name = m.Groups["name"].Value;
        var type = m.Groups["type"].Value;
        var whole = type.Contains("long", StringComparison.OrdinalIgnoreCase) || type.Contains("int", StringComparison.OrdinalIgnoreCase);
        return Problems.Of(400, "validation_failed", b.Message, [new FieldError(name, "type", $"{name}: must be {(whole ? "a whole number" : "a " + type)}")]);
    }
}

/// <summary>
/// Answers the caller's faults (<see cref="ErrorMapping.IsCallers"/>) with their problem and reports them handled, so
/// they are not logged as server errors; anything else falls through to the 500 handler, which the framework logs.
/// </summary>
public sealed class CallerFaultHandler : IExceptionHandler
{
    public async ValueTask<bool> TryHandleAsync(HttpContext httpContext, Exception exception, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(httpContext);
        if (!ErrorMapping.IsCallers(exception))
        {
            return false;
        }

        await ErrorMapping.ToProblem(exception).ExecuteAsync(httpContext);
        return true;
    }
}
