# Before the first job: the network check (common.smk). MLflow: one parent run per invocation and dataset, the jobs' runs nested under it (medseg.tracking).


onstart:
    from medseg.tracking import invocation

    if NETWORK_CHECK is not None:
        NETWORK_CHECK.wait()  # a bad network setting stops the run here, before any job
    if invocation.enabled(config):
        invocation.start(config, workflow, W)
    else:
        invocation.disable()


onsuccess:
    from medseg.tracking import invocation

    if invocation.enabled(config):
        invocation.end("FINISHED")


onerror:
    from medseg.tracking import invocation

    if invocation.enabled(config):
        invocation.end("FAILED")
