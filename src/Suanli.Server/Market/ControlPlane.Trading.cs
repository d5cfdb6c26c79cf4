using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>
/// The application services the API calls for the directory and the trading centre: each writes the store and keeps
/// the live state current in the same call (a new tenant or provider known, offers re-read, waiting jobs retried once
/// money moved), so no endpoint pokes the live state itself.
/// </summary>
public sealed partial class ControlPlane
{
    /// <summary>Creates a tenant (idempotent with <paramref name="once"/>) and puts it in the live tenant table.</summary>
    public async Task<TenantRecord> CreateTenantAsync(string name, string sector, double weight, IdempotencyClaim? once, CancellationToken ct = default)
    {
        var t = await _store.CreateTenantAsync(name, sector, weight, NowMs, once, ct);
        TenantCreated(t);
        return t;
    }

    /// <summary>Creates a provider (idempotent with <paramref name="once"/>); it takes jobs once its agent registers.</summary>
    public async Task<ProviderRecord> CreateProviderAsync(string name, string region, IdempotencyClaim? once, CancellationToken ct = default)
    {
        var p = await _store.CreateProviderAsync(name, region, NowMs, once, ct);
        ProviderCreated(p);
        return p;
    }

    /// <summary>Publishes an offer; placement partitions its group from the next cycle.</summary>
    public async Task<OfferRecord> CreateOfferAsync(OfferRecord offer, CancellationToken ct = default)
    {
        var o = await _ledger.CreateOfferAsync(offer, ct);
        OffersChanged(await _ledger.OffersAsync(ct));
        return o;
    }

    /// <summary>Withdraws an offer (<paramref name="providerId"/> null: the operator); a withdrawn contract settles pro rata at once.</summary>
    public async Task<OfferRecord> WithdrawOfferAsync(long id, long? providerId, CancellationToken ct = default)
    {
        var o = await _ledger.WithdrawOfferAsync(id, providerId, NowMs, ct);
        var offers = await _ledger.OffersAsync(ct);
        if (o.ContractState is not null && await _ledger.SettleContractsAsync(NowMs, Options.FeeBps, ct) > 0)
        {
            MoneyMoved(o.TenantId);
            offers = await _ledger.OffersAsync(ct);
            o = offers.First(x => x.Id == o.Id);
        }

        OffersChanged(offers);
        return o;
    }

    /// <summary>A tenant's answer to a proposed contract (<paramref name="tenantId"/> null: the operator for it).</summary>
    public async Task<OfferRecord> AnswerContractAsync(long id, long? tenantId, bool accept, CancellationToken ct = default)
    {
        var o = await _ledger.AnswerContractAsync(id, tenantId, accept, NowMs, ct);
        if (accept)
        {
            MoneyMoved(o.TenantId); // the contract's value is now escrowed
        }

        OffersChanged(await _ledger.OffersAsync(ct));
        return o;
    }

    /// <summary>
    /// Applies one wallet transfer (a top-up or a payout) on its own; a top-up retries the tenant's jobs that waited
    /// for funds. <paramref name="tenantId"/>: the tenant whose wallet it is, if any.
    /// </summary>
    public async Task<TransferOutcome> MoveMoneyAsync(TransferRequest transfer, long? tenantId, bool topUp, CancellationToken ct = default)
    {
        var o = (await _ledger.TransferAsync([transfer], false, NowMs, ct))[0];
        if (o.Ok && topUp)
        {
            MoneyMoved(tenantId);
            Wake();
        }

        return o;
    }

    /// <summary>Issues a voucher of a programme to a tenant; its jobs that waited for funds are tried again.</summary>
    public async Task<VoucherRecord> IssueVoucherAsync(long programmeId, long tenantId, long amountFen, long validToMs, CancellationToken ct = default)
    {
        var v = await _ledger.IssueVoucherAsync(programmeId, tenantId, amountFen, validToMs, NowMs, ct);
        MoneyMoved(tenantId);
        return v;
    }
}
