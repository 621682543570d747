"""`trainfleet bench net`: the job it runs on the nodes (`job/`, synced as a project of its
own) and the numbers it reads back (`results`). Not the repository's `bench/`, which
measures trainfleet itself."""
