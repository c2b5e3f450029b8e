"""needflow's workflows. The task queue and the custom search attributes live here so the
worker, the API, the dev stack and the tests name them once.

Search attributes carry no personal data: ids, products, stages and statuses only.
"""

from temporalio.common import SearchAttributeKey

TASK_QUEUE = "needflow"

SA_PRODUCT = SearchAttributeKey.for_keyword("Product")
SA_STAGE = SearchAttributeKey.for_keyword("Stage")
SA_OWNER_ID = SearchAttributeKey.for_keyword("OwnerId")
SA_CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
SA_OPPORTUNITY_STATUS = SearchAttributeKey.for_keyword("OpportunityStatus")

#: Every custom search attribute needflow uses; the dev stack and tests register these.
SEARCH_ATTRIBUTES = (SA_PRODUCT, SA_STAGE, SA_OWNER_ID, SA_CUSTOMER_ID, SA_OPPORTUNITY_STATUS)

SA_REFERRAL_STATUS = SearchAttributeKey.for_keyword("ReferralStatus")
SA_ASSIGNEE_ID = SearchAttributeKey.for_keyword("AssigneeId")
SA_EXPRESSED_INTEREST = SearchAttributeKey.for_keyword("ExpressedInterest")

SEARCH_ATTRIBUTES += (SA_REFERRAL_STATUS, SA_ASSIGNEE_ID, SA_EXPRESSED_INTEREST)

#: True while an activity of the workflow has failed for good and waits for ops to repair
#: and retry it (workflows/attention.py); set from the first such failure on.
SA_NEEDS_ATTENTION = SearchAttributeKey.for_bool("NeedsAttention")

SEARCH_ATTRIBUTES += (SA_NEEDS_ATTENTION,)
