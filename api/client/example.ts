// Compiled (not run) by the tests: a frontend's use of the client, type-checked against the
// types generated from the API's OpenAPI document.
import { type BundleCheck, ProblemError, TrainproofClient, type StatusChangeEvent } from "./client";

// a marketplace lists a job as verifiable only when its inputs can be had
export function inputs(b: BundleCheck): string {
  if (b.unverifiable) return `unverifiable: bundle ${b.status} (${b.part ?? "?"}: ${b.why ?? ""})`;
  return b.status === "verified" ? `inputs verified (${b.scope ?? ""})` : "inputs not checked yet";
}

export async function show(api: TrainproofClient, jobId: number): Promise<string> {
  try {
    const st = await api.status(jobId);
    const games = st.games.map((g) => `game ${g.id} at ${g.level}, ${g.to_move ?? "nobody"} to move`);
    const page = await api.jobs({ status: "disputed", limit: 10 });
    const reward: string = page.items[0]?.reward ?? "0";
    const record = await api.account(st.games[0]?.challenger ?? "0x0");
    const profit: string = record.as_challenger.profit;
    return `${st.status} (${games.join("; ")}), ${inputs(st.bundle)}, reward ${reward} wei, profit ${profit} wei`;
  } catch (e) {
    if (e instanceof ProblemError && e.problem.status === 404) return `no job ${jobId}`;
    throw e;
  }
}

export function follow(api: TrainproofClient): () => void {
  return api.events((e: StatusChangeEvent) => {
    const what: string = e.kind === "game" ? `game ${e.game_id} ${e.level}`
      : `job ${e.job_id} ${e.status}${e.bundle ? `, bundle ${e.bundle}` : ""}`;
    console.log(e.block, what);
  });
}
