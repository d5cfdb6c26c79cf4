using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.HttpResults;

namespace Suanli.Server;

/// <summary>
/// RFC 9457 problem responses with a stable machine-readable <c>code</c> and, for validation, <c>errors</c>: one entry
/// per broken rule with the field path and the rule name.
/// </summary>
public static class Problems
{
    public static ProblemHttpResult Of(int status, string code, string detail, IReadOnlyList<FieldError>? errors = null)
    {
        var ext = new Dictionary<string, object?> { ["code"] = code };
        if (errors is not null)
        {
            ext["errors"] = errors.Select(e => new { field = e.Field, rule = e.Rule, message = e.Message }).ToList();
        }

        return TypedResults.Problem(detail, statusCode: status, title: Title(status), type: $"https://suanli.dev/problems/{code}", extensions: ext);
    }

    public static ProblemHttpResult Validation(ValidationException e) => Of(StatusCodes.Status400BadRequest, "validation_failed", e.Message, e.Errors);

    public static ProblemHttpResult Validation(string field, string rule, string message) =>
        Validation(new ValidationException([new FieldError(field, rule, message)]));

    public static ProblemHttpResult NotFound(string what) => Of(StatusCodes.Status404NotFound, "not_found", $"{what} does not exist");

    private static string Title(int status) => status switch
    {
        400 => "Invalid request",
        401 => "Unauthenticated",
        403 => "Forbidden",
        404 => "Not found",
        409 => "Conflict",
        413 => "Request body too large",
        415 => "Unsupported media type",
        _ => "Error",
    };

    /// <summary>Reads the request body as UTF-8 text of at most <paramref name="max"/> bytes.</summary>
    public static async Task<(string? Text, IResult? Error)> ReadBodyAsync(HttpRequest request, int max)
    {
        if (request.ContentLength > max)
        {
            return (null, Of(StatusCodes.Status413PayloadTooLarge, "body_too_large", $"body: at most {max} bytes"));
        }

        using var ms = new MemoryStream();
        var buffer = new byte[16384];
        int n;
        while ((n = await request.Body.ReadAsync(buffer)) > 0)
        {
            if (ms.Length + n > max)
            {
                return (null, Of(StatusCodes.Status413PayloadTooLarge, "body_too_large", $"body: at most {max} bytes"));
            }

            ms.Write(buffer, 0, n);
        }

        try
        {
            return (new UTF8Encoding(false, true).GetString(ms.GetBuffer(), 0, (int)ms.Length), null);
        }
        catch (DecoderFallbackException)
        {
            return (null, Validation("$", "encoding", "body must be UTF-8"));
        }
    }

    /// <summary>Reads a JSON object body with strict syntax errors.</summary>
    public static async Task<(JsonObject? Body, IResult? Error)> ReadObjectAsync(HttpRequest request, int max = 1 << 16)
    {
        var (text, error) = await ReadBodyAsync(request, max);
        return error is not null ? (null, error) : ParseObject(text!);
    }

    /// <summary>Parses a body already read as a strict JSON object.</summary>
    public static (JsonObject? Body, IResult? Error) ParseObject(string text)
    {
        try
        {
            return StrictInput.ParseJson(text) is JsonObject o ? (o, null) : (null, Validation("$", "type", "body must be a JSON object"));
        }
        catch (ValidationException e)
        {
            return (null, Validation(e));
        }
    }

    /// <summary>
    /// Reads a JSON object body into <typeparamref name="T"/> (the agent protocol's typed messages): a wrong type or a
    /// missing required member is a validation problem naming the field, never an exception.
    /// </summary>
    public static async Task<(T? Value, IResult? Error)> ReadAsync<T>(HttpRequest request, int max = 1 << 16)
        where T : class
    {
        var (body, error) = await ReadObjectAsync(request, max);
        if (error is not null)
        {
            return (null, error);
        }

        try
        {
            return body.Deserialize<T>(Typed) is { } v ? (v, null) : (null, Validation("$", "type", "body must be a JSON object"));
        }
        catch (JsonException e)
        {
            var field = e.Path is null or "$" ? "$" : e.Path.StartsWith("$.", StringComparison.Ordinal) ? e.Path[2..] : e.Path;
            return (null, Validation(field, "type", $"{field}: wrong type or missing ({e.Message.Split(". Path:", 2)[0]})"));
        }
    }

    private static readonly JsonSerializerOptions Typed = new(JsonSerializerDefaults.Web)
    {
        RespectNullableAnnotations = true,
        UnmappedMemberHandling = System.Text.Json.Serialization.JsonUnmappedMemberHandling.Disallow,
    };
}
