// A small typed fetch client for the trainproof verification-status API.
//
// The types come from the API's own OpenAPI document: `make api-client` (or the test
// tests/test_api_frontend.py) runs openapi-typescript on it and writes ./schema.d.ts next
// to this file. Every method returns the documented body or throws a ProblemError carrying
// the RFC 9457 problem details.
import type { components, paths } from "./schema";

export type Problem = components["schemas"]["Problem"];
export type CommitmentStatus = components["schemas"]["CommitmentStatus"];
export type JobPage = components["schemas"]["JobPage"];
export type JobDetail = components["schemas"]["JobDetail"];
export type DisputeDetail = components["schemas"]["DisputeDetail"];
export type AccountRecord = components["schemas"]["AccountRecord"];
export type Coverage = components["schemas"]["Coverage"];
export type StatusChangeEvent = components["schemas"]["StatusChangeEvent"];
/** A job's bundle check; `unverifiable` true: nobody can obtain the job's inputs. */
export type BundleCheck = components["schemas"]["BundleCheck"];
export type JobsQuery = NonNullable<paths["/v1/jobs"]["get"]["parameters"]["query"]>;

export class ProblemError extends Error {
  constructor(readonly problem: Problem) {
    super(`${problem.status} ${problem.title}: ${problem.detail ?? ""}`);
  }
}

export class TrainproofClient {
  constructor(
    readonly baseUrl: string,
    private readonly fetchImpl: typeof fetch = fetch,
  ) {}

  private async get<T>(path: string, query?: Record<string, unknown>): Promise<T> {
    const url = new URL(path, this.baseUrl);
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v !== undefined && v !== null) url.searchParams.set(k, String(v));
    }
    const resp = await this.fetchImpl(url, { headers: { Accept: "application/json" } });
    if (!resp.ok) throw new ProblemError((await resp.json()) as Problem);
    return (await resp.json()) as T;
  }

  jobs(query: JobsQuery = {}): Promise<JobPage> {
    return this.get("/v1/jobs", query);
  }
  job(id: number): Promise<JobDetail> {
    return this.get(`/v1/jobs/${id}`);
  }
  status(id: number): Promise<CommitmentStatus> {
    return this.get(`/v1/jobs/${id}/status`);
  }
  coverage(id: number): Promise<Coverage> {
    return this.get(`/v1/jobs/${id}/coverage`);
  }
  dispute(id: number): Promise<DisputeDetail> {
    return this.get(`/v1/disputes/${id}`);
  }
  account(address: string): Promise<AccountRecord> {
    return this.get(`/v1/accounts/${address}`);
  }

  /** Follow status changes (server-sent events); returns a function that stops it. */
  events(onChange: (e: StatusChangeEvent) => void, jobId?: number): () => void {
    const url = new URL("/v1/events", this.baseUrl);
    if (jobId !== undefined) url.searchParams.set("job_id", String(jobId));
    const source = new EventSource(url);
    const handler = (m: MessageEvent<string>) => onChange(JSON.parse(m.data) as StatusChangeEvent);
    for (const kind of ["job", "game", "reorg"] as const) source.addEventListener(kind, handler);
    return () => source.close();
  }
}
