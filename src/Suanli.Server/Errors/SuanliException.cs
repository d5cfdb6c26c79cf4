namespace Suanli.Server;

/// <summary>
/// A caller's or the domain's rule was broken: the request changes nothing and is answered with a problem carrying
/// <see cref="Code"/> (stable, machine-readable) and <see cref="Status"/>. Expected outcomes are values, not these;
/// infrastructure faults are the driver's own exceptions (logged, retried at loop boundaries, 500 at the API).
/// The one place these become HTTP is <see cref="ErrorMapping"/>.
/// </summary>
public abstract class SuanliException(string code, string message) : Exception(message)
{
    /// <summary>Stable error code (the problem's <c>code</c> and the last segment of its <c>type</c>).</summary>
    public string Code { get; } = code;

    /// <summary>The HTTP status the problem is answered with.</summary>
    public abstract int Status { get; }
}

/// <summary>A request body or parameter that broke one or more rules; nothing was stored. Status 400.</summary>
public sealed class ValidationException(IReadOnlyList<FieldError> errors)
    : SuanliException("validation_failed", string.Join("; ", errors.Select(e => $"{e.Field}: {e.Message}")))
{
    public ValidationException(string field, string rule, string message)
        : this([new FieldError(field, rule, message)])
    {
    }

    /// <summary>Each broken rule with the field it names.</summary>
    public IReadOnlyList<FieldError> Errors { get; } = errors;

    public override int Status => 400;
}

/// <summary>
/// An operation refused by a rule of the state it meets (a unique name taken, a stale epoch, a wrong state, money that
/// is not there): status 409, or 404 when what it names does not exist (code <c>not_found</c>).
/// </summary>
public sealed class StoreConflictException(string code, string message) : SuanliException(code, message)
{
    public override int Status => Code == "not_found" ? 404 : 409;
}
